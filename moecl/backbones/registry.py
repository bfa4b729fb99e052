"""The backbone registry: ``backbone.name`` -> builder(cfg) -> Backbone."""
from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from moecl.backbones.base import Backbone
from moecl.registry import Registry

BACKBONES: Registry[Callable[[DictConfig], Backbone]] = Registry("backbone")
register = BACKBONES.register
