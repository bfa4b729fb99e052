"""Zero-shot CLIP: the frozen model with its text head, never trained (the MTIL reference row)."""
from __future__ import annotations

from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register


@register("zero_shot")
class ZeroShot(ContinualMethod):
    """Classifies with class-name prompts through the frozen text tower; no gradient steps."""

    needs_training = False
