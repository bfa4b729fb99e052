"""The base of every expert wrapper: a frozen ``base_layer`` plus trainable experts."""
from __future__ import annotations

import torch
from torch import nn


class ExpertWrapper(nn.Module):
    """Marks a module that wraps a frozen pretrained layer with experts.

    The backbone keeps its pretrained modules in eval mode (dropout, normalisation
    statistics) whatever mode the method is in; wrappers follow the method's mode, so
    train-only behaviour (dropout, evaluation-time pruning) switches as it should.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)

    # Model code sometimes reads a layer's weight directly (open_clip reads
    # `mlp.c_fc.weight.dtype`); the wrapper answers with the frozen base layer's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias
