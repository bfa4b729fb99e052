"""Sequential LoRA: one LoRA per target layer, trained through every experience."""
from __future__ import annotations

from omegaconf import DictConfig

from moecl.backbones import Backbone
from moecl.errors import check_range
from moecl.experts.inject import inject, wrapped_layers
from moecl.experts.lora import LoRALinear
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register
from moecl.methods.targets import resolve_targets


@register("seq_lora")
class SequentialLoRA(ContinualMethod):
    """The forgetting baseline: the same LoRA weights keep adapting to each new task."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        check_range("method.rank", cfg.rank, low=1, integer=True)
        inject(backbone.model, resolve_targets(backbone, cfg.targets, cfg.get("towers", ["image"])), lambda m: LoRALinear(m, cfg.rank, cfg.alpha, cfg.dropout))

    def expert_stats(self) -> dict:
        layers = wrapped_layers(self.backbone, LoRALinear).values()
        activated = sum(m.activated_params() for m in layers)
        return {"lora_layers": len(layers), "rank": self.cfg.rank, "activated_params_per_token": activated}
