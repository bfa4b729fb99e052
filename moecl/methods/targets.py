"""Which linear layers of a backbone a method wraps (``method.targets``, ``method.towers``)."""
from __future__ import annotations

import re
from collections.abc import Sequence

from omegaconf import ListConfig

from moecl.backbones import Backbone
from moecl.errors import ConfigError
from moecl.experts.inject import find_targets


def resolve_targets(backbone: Backbone, targets: str | Sequence[str], towers: Sequence[str] = ("image",)) -> str | list[str]:
    """``default`` -> the backbone's attention and MLP projections, ``mlp`` -> its MLP projections,
    ``attention`` -> the rest of ``default``; else a regex or name endings.

    ``towers`` keeps the layers of the named towers only (CLIP: ``image``, ``text``).
    """
    towers = [str(t) for t in towers]
    unknown = [t for t in towers if t not in backbone.towers]
    if unknown or not towers:
        raise ConfigError(f"method.towers={towers} is not allowed for {backbone.name}; choose from: {', '.join(backbone.towers)}")
    if targets == "default":
        chosen: str | list[str] = list(backbone.default_targets)
    elif targets == "mlp":
        chosen = backbone.mlp_targets
    elif targets == "attention":
        mlp = set(find_targets(backbone.model, backbone.mlp_targets))
        chosen = "|".join(re.escape(n) for n in find_targets(backbone.model, backbone.default_targets) if n not in mlp)
    elif isinstance(targets, (list, tuple, ListConfig)):
        chosen = [str(t) for t in targets]
    else:
        chosen = str(targets)
    if list(backbone.towers) == towers:
        return chosen  # every tower: no filtering needed
    prefixes = tuple(backbone.towers[t] for t in towers)
    names = [n for n in find_targets(backbone.model, chosen) if n.startswith(prefixes)]
    if not names:
        raise ConfigError(f"method.targets={chosen} matches no linear layer in the {'/'.join(towers)} tower(s) of {backbone.name}")
    # A regex of the exact names: as name endings, "transformer.resblocks.0.attn.q_proj"
    # would also match the image tower's "visual.transformer.resblocks.0.attn.q_proj".
    return "|".join(re.escape(n) for n in names)
