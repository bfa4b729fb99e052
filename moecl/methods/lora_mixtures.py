"""Mixtures of whole LoRA experts: MixLoRA and LoRAMoE (design.md "Rank-wise family").

- ``mixlora``: top-k router over LoRA experts in each MLP linear, plus a plain LoRA on the
  attention projections (MixLoRA, Li et al. 2024).
- ``loramoe``: LoRA experts in the MLP linears, a dense softmax router (every expert
  weighted), and localized balancing: experts split into ``groups`` groups, the balance
  constraint applied within each (LoRAMoE, Dou et al. 2024).

Both keep one set of experts for the whole stream (they are multi-task methods): in
continual mode every task updates the same experts, as sequential LoRA does.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from moecl.backbones import Backbone
from moecl.errors import ConfigError, check_choice, check_range
from moecl.experts.inject import inject, wrapped_layers
from moecl.experts.lora import LoRALinear
from moecl.experts.lora_mixture import LoRAMixtureLinear
from moecl.experts.routing import FORMULAS, coefficient_of_variation
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register
from moecl.methods.targets import resolve_targets


@register("mixlora", "loramoe")
class LoRAMixture(ContinualMethod):
    """LoRA experts routed per token in the MLP linears (``targets``), optional LoRA on attention."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        towers = cfg.get("towers", ["image"])
        if cfg.attention_rank:
            inject(backbone.model, resolve_targets(backbone, "attention", towers), lambda m: LoRALinear(m, cfg.attention_rank, cfg.attention_rank))
        inject(
            backbone.model,
            resolve_targets(backbone, cfg.targets, towers),
            lambda m: LoRAMixtureLinear(m, cfg.experts, cfg.rank, cfg.alpha, self.make_router(m.in_features, cfg.top_k, cfg.formula, cfg.groups), cfg.kernel),
        )
        self.mixtures = wrapped_layers(backbone.model, LoRAMixtureLinear)
        self.last_load: dict | None = None
        self._counts: dict[str, torch.Tensor] = {}

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        check_range("method.experts", cfg.experts, low=1, integer=True)
        check_range("method.rank", cfg.rank, low=1, integer=True)
        check_range("method.top_k", cfg.top_k, low=1, high=cfg.experts, integer=True)
        check_range("method.attention_rank", cfg.attention_rank, low=0, integer=True)
        check_choice("method.formula", cfg.formula, FORMULAS)
        check_range("method.groups", cfg.groups, low=1, high=cfg.experts, integer=True)
        if cfg.experts % cfg.groups:
            raise ConfigError(f"method.groups={cfg.groups} must divide method.experts={cfg.experts}")
        self.validate_balance()

    def on_evaluate_start(self, test_experience: int) -> None:
        if self.starts_statistics(test_experience):
            self._counts = {name: m.router.new_counts() for name, m in self.mixtures.items()}
        counting = self.counts_statistics(test_experience)
        for name, m in self.mixtures.items():
            m.router.counts = self._counts[name] if counting else None  # the router adds to it in place

    def on_evaluate_end(self, test_experience: int) -> None:
        for m in self.mixtures.values():
            m.router.counts = None
        if not self.counts_statistics(test_experience):
            return
        cv = [coefficient_of_variation(c) for c in self._counts.values()]
        self.last_load = {
            "experience": test_experience + 1,
            "load_cv": sum(cv) / len(cv),
            "load_cv_per_layer": dict(zip(self.mixtures, cv)),
            "activated_params_per_token": round(sum(m.activated_params() for m in self.mixtures.values()) + self._attention_params()),
        }

    def _attention_params(self) -> int:
        return sum(m.activated_params() for m in wrapped_layers(self.backbone, LoRALinear).values())

    def expert_stats(self) -> dict:
        return {"experts_per_layer": self.cfg.experts, "rank": self.cfg.rank, "top_k": self.cfg.top_k, "routing": self.last_load}
