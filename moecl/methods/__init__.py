"""Continual-learning methods, by name (docs/methods.md)."""
from __future__ import annotations

from omegaconf import DictConfig

from moecl.backbones import Backbone
from moecl.methods import avalanche_peers, lora_mixtures, moe_adapters, mora, probes, sema, seq_lora, zero_shot  # noqa: F401  (fill the registry)
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import METHODS, register


def build_method(cfg: DictConfig, backbone: Backbone, num_classes: int, class_names: list[str] | None = None) -> ContinualMethod:
    """Build the method named by ``cfg.name`` around ``backbone`` (class names feed text heads)."""
    return METHODS.get(cfg.name)(backbone, num_classes, cfg, class_names)


__all__ = ["METHODS", "ContinualMethod", "build_method", "register"]
