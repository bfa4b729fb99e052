"""A linear head over every class of the stream; classes not yet seen are masked."""
from __future__ import annotations

import torch
from torch import nn


class MaskedLinearHead(nn.Module):
    """Linear classifier whose active classes grow with the stream.

    All rows exist from the start (the stream's class count is known), so growing the
    head never re-creates parameters; ``seen`` masks rows of classes not yet met.
    """

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def add_classes(self, classes: list[int]) -> None:
        self.seen[classes] = True

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)
