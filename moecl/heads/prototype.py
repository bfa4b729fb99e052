"""Nearest-class-mean head on frozen features."""
from __future__ import annotations

import torch
from torch import nn


class PrototypeHead(nn.Module):
    """Cosine similarity to class means of frozen features (SimpleCIL-style)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def add_classes(self, classes: list[int]) -> None:
        self.seen[classes] = True

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        for c in labels.unique().tolist():
            self.prototypes[c] = features[labels == c].mean(0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=-1) @ nn.functional.normalize(self.prototypes, dim=-1).t()
