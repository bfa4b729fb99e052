"""Frozen pretrained backbones, by name (see docs/backbones.md)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from moecl.backbones import clip, vit  # noqa: F401  (fill the registry)
from moecl.backbones.base import Backbone, ImagePreprocess
from moecl.backbones.registry import BACKBONES, register


def build_backbone(cfg: DictConfig) -> Backbone:
    """Build and freeze the backbone named by ``cfg.name``.

    ``timm:<model>`` is shorthand for ``name=timm, model=<model>``.
    """
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    name = cfg.name
    if isinstance(name, str) and name.startswith("timm:"):
        cfg.name, cfg.model = "timm", name.split(":", 1)[1]
    return BACKBONES.get(cfg.name)(cfg)


__all__ = ["Backbone", "ImagePreprocess", "BACKBONES", "register", "build_backbone"]
