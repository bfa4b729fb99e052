"""Which linear layers of a backbone a method wraps (``method.targets``)."""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import ListConfig

from moecl.backbones import Backbone


def resolve_targets(backbone: Backbone, targets: str | Sequence[str]) -> str | list[str]:
    """``default`` -> the backbone's attention and MLP projections; else a regex or name endings."""
    if targets == "default":
        return list(backbone.default_targets)
    if isinstance(targets, (list, tuple, ListConfig)):
        return [str(t) for t in targets]
    return str(targets)
