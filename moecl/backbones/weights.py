"""Loading local weights into a backbone: safetensors or a torch state dict."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from moecl.errors import CheckpointError, describe


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (weights_only=True)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint={str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint={str(path)!r} is not a readable weights file ({describe(err)})") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint={str(path)!r} holds no state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local checkpoint into ``model``; shape or key mismatches fail in one line.

    Keys starting with ``ignore_prefixes`` (e.g. a classifier the backbone drops) are skipped.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"checkpoint={str(path)!r} does not fit the backbone: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)} ({len(wrong)} mismatched tensors)"
        )
    if missing or unexpected:
        parts = [f"{len(keys)} {what} keys (e.g. {', '.join(keys[:3])})" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"checkpoint={str(path)!r} does not fit the backbone: {'; '.join(parts)}")
    model.load_state_dict(state)
