"""Baselines on the frozen backbone: a linear probe and a prototype (class-mean) head."""
from __future__ import annotations

from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register


@register("linear_probe")
class LinearProbe(ContinualMethod):
    """Only the linear head trains, on cached frozen features."""

    frozen_features = True


@register("prototype")
class Prototype(ContinualMethod):
    """SimpleCIL-like: cosine similarity to class means of frozen features; no gradient steps."""

    frozen_features = True
    needs_training = False
