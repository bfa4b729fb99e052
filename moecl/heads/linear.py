"""A linear (or cosine) classifier over every class of the stream."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LinearHead(nn.Module):
    """Logits for all classes of the stream; the method masks classes not yet seen.

    All rows exist from the start (the stream's class count is known), so growing the
    set of classes never re-creates parameters. With ``cosine=True`` logits are
    ``scale * cos(feature, row)`` (no bias): classes trained in different tasks then
    give logits of the same scale, which removes most of the new-class bias of
    class-incremental heads.
    """

    def __init__(self, feature_dim: int, num_classes: int, cosine: bool = False, scale: float = 16.0) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes, bias=not cosine)
        if not cosine:
            nn.init.zeros_(self.linear.bias)
        self.cosine = cosine
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.linear.weight, dim=-1).t()
        return self.linear(features)
