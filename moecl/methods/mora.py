"""MoRA: mixture of self-activated rank-1 experts, grown per task (design.md "Methods / MoRA")."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from moecl.backbones import Backbone
from moecl.errors import ConfigError, check_range
from moecl.experts.inject import inject, wrapped_layers
from moecl.experts.rank1 import Rank1Linear, RankUsage
from moecl.kernels import BACKENDS, interpreting
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register
from moecl.methods.targets import resolve_targets


@register("mora")
class MoRA(ContinualMethod):
    """Each task appends ``rank_per_task`` atoms to every target layer and freezes older ones."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        delta = cfg.delta if cfg.delta else None
        inject(
            backbone.model,
            resolve_targets(backbone, cfg.targets, cfg.get("towers", ["image"])),
            lambda m: Rank1Linear(m, cfg.top_k, cfg.tau, delta, cfg.prune_in_training, cfg.kernel),
        )
        self.layers = wrapped_layers(backbone.model, Rank1Linear)
        # {"experience", "utilisation": per-atom mean over layers, "active_ranks_per_token"}
        self.last_usage: dict | None = None

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        check_range("method.rank_per_task", cfg.rank_per_task, low=1, integer=True)
        if not isinstance(cfg.top_k, int) or not 2 <= cfg.top_k <= cfg.rank_per_task:
            # The reference clamps k to >= 2 so the softmax keeps a gradient; we refuse instead of silently changing it.
            raise ConfigError(
                f"method.top_k={cfg.top_k!r} is out of range; allowed: 2 <= top_k <= rank_per_task ({cfg.rank_per_task})"
            )
        check_range("method.tau", cfg.tau, low=0, low_inclusive=False)
        if cfg.delta is not None:
            check_range("method.delta", cfg.delta, low=0, high=1)
        if cfg.kernel not in BACKENDS:
            raise ConfigError(f"method.kernel={cfg.kernel!r} is not allowed; choose one of: {', '.join(BACKENDS)}")
        if cfg.kernel == "triton" and not (torch.cuda.is_available() or interpreting()):
            raise ConfigError("method.kernel='triton' needs a CUDA GPU; use method.kernel=auto (Triton on GPU, torch on CPU) or torch")

    def before_experience(self, experience: int, classes: list[int]) -> None:
        super().before_experience(experience, classes)
        for layer in self.layers.values():
            layer.add_atoms(experience, self.cfg.rank_per_task)

    # -- statistics: measured on the test data of the task just trained ---------
    def on_evaluate_start(self, test_experience: int) -> None:
        if test_experience == self.current_experience:
            for layer in self.layers.values():
                layer.usage = RankUsage(layer.num_atoms)

    def on_evaluate_end(self, test_experience: int) -> None:
        if test_experience != self.current_experience:
            return
        usages = [layer.usage for layer in self.layers.values()]
        for layer in self.layers.values():
            layer.usage = None
        # Every layer holds the same atom count, so atom i is comparable across layers.
        util = torch.tensor([u.utilisation() for u in usages]).mean(0).tolist()
        active = float(sum(u.active_ranks_per_token() for u in usages) / len(usages))
        self.last_usage = {"experience": test_experience + 1, "utilisation": util, "active_ranks_per_token": active}

    def expert_stats(self) -> dict:
        return {"atoms_per_layer": {name: layer.num_atoms for name, layer in self.layers.items()}, "usage": self.last_usage}
