"""PEFT-style injection: swap target nn.Linear modules for expert wrappers, by name.

Targets are chosen like PEFT's ``target_modules``: a string is a regex that must
match the full module name; a list matches name endings (``"qkv"`` matches
``blocks.3.attn.qkv``). Only nn.Linear modules qualify; backbones expose the
projections of nn.MultiheadAttention as nn.Linear (see backbones/attention.py).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import nn

from moecl.errors import ConfigError

if TYPE_CHECKING:
    from moecl.backbones import Backbone


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_names(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules of ``model`` (the candidates for experts)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]


def layer_name_patterns(names: Sequence[str]) -> list[str]:
    """Collapse numbered names (blocks.0.mlp.fc1, blocks.1.mlp.fc1 -> blocks.*.mlp.fc1) for messages."""
    return sorted({re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names})


def find_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Names of the nn.Linear modules matched by ``targets``; none is an error."""
    names = [n for n in linear_names(model) if _matches(n, targets)]
    if not names:
        raise ConfigError(
            f"method.targets={targets if isinstance(targets, str) else list(targets)} matches no linear layer; "
            f"the backbone has: {', '.join(layer_name_patterns(linear_names(model)))}"
        )
    return names


def inject(model: nn.Module, targets: str | Sequence[str], wrap: Callable[[nn.Linear], nn.Module]) -> dict[str, nn.Module]:
    """Replace each target nn.Linear by ``wrap(linear)`` in place; returns {name: wrapper}."""
    wrappers = {}
    for name in find_targets(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = wrap(getattr(parent, child))
        setattr(parent, child, wrapper)
        wrappers[name] = wrapper
    return wrappers


def wrap_block_mlps(backbone: "Backbone", method: str, wrap: Callable[[nn.Module], nn.Module]) -> dict[str, nn.Module]:
    """Replace each transformer block's ``mlp`` by ``wrap(mlp)`` (adapters beside the MLP); returns {block: wrapper}.

    A backbone without named blocks, or a block without an ``mlp``, is a one-line ConfigError naming ``method``.
    """
    if not backbone.block_names:
        raise ConfigError(f"backbone {backbone.name!r} names no transformer blocks; {method} needs them to place adapters")
    wrappers = {}
    for name in backbone.block_names:
        block = backbone.model.get_submodule(name)
        if not hasattr(block, "mlp"):
            raise ConfigError(f"block {name!r} of backbone {backbone.name!r} has no `mlp` module to put adapters beside")
        block.mlp = wrap(block.mlp)
        wrappers[name] = block.mlp
    return wrappers


def wrapped_layers(model: nn.Module, kind: type) -> dict[str, nn.Module]:
    """The expert wrappers of type ``kind`` inside ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, kind)}
