"""Checkpoints after each finished experience: experts, heads, method state, metrics so far."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from moecl.errors import CheckpointError, describe
from moecl.training.atomic import write_torch

FORMAT = "moecl-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, *, experience: int, state: dict, extra: dict, progress: dict, fingerprint: str) -> None:
    """Write the checkpoint of the run after ``experience`` (0-based) atomically."""
    write_torch(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "experience": experience,
            "fingerprint": fingerprint,
            "state": state,
            "extra": extra,
            "progress": progress,
        },
    )


def load_checkpoint(path: Path, fingerprint: str) -> dict:
    """Read a checkpoint with ``weights_only=True``; anything foreign or corrupt fails in one line."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a moecl checkpoint ({describe(err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a moecl checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {ckpt.get('version')!r}; this moecl reads {VERSION}")
    if ckpt.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {str(path)!r} belongs to a run with another config; resume with the same config or use a new hydra.run.dir"
        )
    return ckpt


def load_method_state(method: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load the saved expert state into a method rebuilt to the same structure."""
    own = method.expert_state_dict()
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit the model: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
            )
    method.load_state_dict(state, strict=False)
