"""Fetching pretrained weights by hub name, failing in one line when offline."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from moecl.errors import CheckpointError, describe

T = TypeVar("T")


def from_hub(description: str, build: Callable[[], T]) -> T:
    """Run ``build`` (which downloads weights); turn network failures into one clear line."""
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as err:
        # urllib/requests/huggingface_hub errors all derive from OSError or RuntimeError.
        raise CheckpointError(
            f"could not fetch pretrained weights for {description} ({describe(err, 100)}); "
            "offline, pass a local file with backbone.checkpoint=<path>"
        ) from err
