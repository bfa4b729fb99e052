"""Plain LoRA (Hu et al., 2021): y = W0 x + (alpha / r) B A x, B zero-initialised."""
from __future__ import annotations

import math

import torch
from torch import nn

from moecl.experts.wrapper import ExpertWrapper


class LoRALinear(ExpertWrapper):
    """A frozen nn.Linear plus one low-rank update."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        self.rank = rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def activated_params(self) -> int:
        """A dense LoRA multiplies every token by all of its A and B."""
        return self.lora_A.numel() + self.lora_B.numel()
