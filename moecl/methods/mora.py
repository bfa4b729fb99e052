"""The rank-wise family: MoRA, SMoRA and FlyLoRA on one rank-1 layer (design.md "Methods / MoRA", "Rank-wise family").

``method.gate`` picks the gate of every Rank1Linear: ``self`` (MoRA), ``router`` (SMoRA)
or ``fly`` (FlyLoRA); everything else (growth per task, freezing, kernel, statistics) is
shared, so their numbers are comparable.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from moecl.backbones import Backbone
from moecl.errors import ConfigError, check_choice, check_range
from moecl.experts.inject import inject, wrapped_layers
from moecl.experts.rank1 import GATES, Rank1Linear, RankUsage
from moecl.kernels import BACKENDS, interpreting
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register
from moecl.methods.targets import resolve_targets


@register("mora", "smora", "flylora")
class RankWise(ContinualMethod):
    """Each task appends ``rank_per_task`` atoms to every target layer and freezes older ones."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        delta = cfg.delta if cfg.delta else None

        def wrap(m: torch.nn.Linear) -> Rank1Linear:
            router = self.make_router(m.in_features, cfg.top_k) if cfg.gate == "router" else None
            fly_bias = cfg.balance.bias_rate if cfg.gate == "fly" and cfg.balance.mode == "bias" else 0.0
            return Rank1Linear(m, cfg.top_k, cfg.tau, delta, cfg.prune_in_training, cfg.kernel,
                               gate=cfg.gate, router=router, density=cfg.density, bias_rate=fly_bias)

        inject(backbone.model, resolve_targets(backbone, cfg.targets, cfg.get("towers", ["image"])), wrap)
        self.layers = wrapped_layers(backbone.model, Rank1Linear)
        # {"experience", "utilisation": per-atom mean over layers, "active_ranks_per_token", "load_cv"}
        self.last_usage: dict | None = None
        self._usage: dict[str, RankUsage] = {}

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        check_choice("method.gate", cfg.gate, GATES)
        check_range("method.rank_per_task", cfg.rank_per_task, low=1, integer=True)
        low = 2 if cfg.gate == "self" else 1
        if not isinstance(cfg.top_k, int) or not low <= cfg.top_k <= cfg.rank_per_task:
            # The reference clamps k to >= 2 so the softmax keeps a gradient; we refuse instead of silently changing it.
            raise ConfigError(
                f"method.top_k={cfg.top_k!r} is out of range; allowed: {low} <= top_k <= rank_per_task ({cfg.rank_per_task})"
            )
        check_range("method.tau", cfg.tau, low=0, low_inclusive=False)
        if cfg.delta is not None:
            check_range("method.delta", cfg.delta, low=0, high=1)
        check_range("method.density", cfg.density, low=0, high=1, low_inclusive=False)
        self.validate_balance()
        if cfg.gate == "fly" and cfg.balance.mode in ("aux", "global"):
            raise ConfigError(f"method.balance.mode={cfg.balance.mode!r} needs a learned router; gate='fly' routes by its frozen A: use bias or none")
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
        if self.starts_statistics(test_experience):
            self._usage = {name: RankUsage(layer.num_atoms) for name, layer in self.layers.items()}
        counting = self.counts_statistics(test_experience)
        for name, layer in self.layers.items():
            layer.usage = self._usage[name] if counting else None

    def on_evaluate_end(self, test_experience: int) -> None:
        for layer in self.layers.values():
            layer.usage = None
        if not self.counts_statistics(test_experience):
            return
        usages = [self._usage[name] for name in self.layers]
        # Every layer holds the same atom count, so atom i is comparable across layers.
        util = torch.tensor([u.utilisation() for u in usages]).mean(0).tolist()
        active = [u.active_ranks_per_token() for u in usages]
        activated = sum(m.activated_params(a) for a, m in zip(active, self.layers.values()))
        self.last_usage = {
            "experience": test_experience + 1,
            "utilisation": util,
            "active_ranks_per_token": sum(active) / len(active),
            "load_cv": sum(u.load_cv() for u in usages) / len(usages),
            "activated_params_per_token": round(activated),
        }

    def expert_stats(self) -> dict:
        return {"atoms_per_layer": {name: layer.num_atoms for name, layer in self.layers.items()}, "usage": self.last_usage}
