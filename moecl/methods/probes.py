"""Baselines on the frozen backbone: a linear probe and a prototype (class-mean) head."""
from __future__ import annotations

import torch

from moecl.heads import PrototypeHead
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

    def build_head(self) -> PrototypeHead:
        return PrototypeHead(self.backbone.feature_dim, self.num_classes)

    def validate(self) -> None:  # no optimiser to check
        pass

    def after_experience(self, experience: int, train_loader: torch.utils.data.DataLoader) -> None:
        feats, labels = zip(*((b[0], b[1]) for b in train_loader))
        self.head.fit(torch.cat(feats).to(self.device), torch.cat(labels).to(self.device))
