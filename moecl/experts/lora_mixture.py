"""A mixture of whole LoRA experts on one linear layer, routed per token (MixLoRA, LoRAMoE).

y = W0 x + sum_e g_e(x) (alpha / r) B_e A_e x. Expert e's r ranks are atoms e*r .. e*r+r-1
of the rank-1 kernel with gate g_e (alpha / r) repeated r times, so the mixture runs
through ``moecl.kernels.sparse_rank_activation`` with an external gate, the same entry as
MoRA's atoms.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from moecl.experts.routing import Router
from moecl.experts.wrapper import ExpertWrapper
from moecl.kernels import sparse_rank_activation


class LoRAMixtureLinear(ExpertWrapper):
    """A frozen nn.Linear plus ``num_experts`` LoRA experts of rank ``rank`` mixed by ``router``."""

    def __init__(self, base_layer: nn.Linear, num_experts: int, rank: int, alpha: float, router: Router, backend: str = "auto") -> None:
        super().__init__(base_layer)
        self.num_experts, self.rank, self.scaling = num_experts, rank, alpha / rank
        self.router = router
        self.backend = backend
        w = base_layer.weight
        self.A = nn.Parameter(torch.empty(num_experts * rank, base_layer.in_features, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base_layer.out_features, num_experts * rank, device=w.device, dtype=w.dtype))
        if router.num_experts == 0:
            router.add_experts(0, num_experts)
        self.router.to(w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.router(x).repeat_interleave(self.rank, dim=-1) * self.scaling
        return sparse_rank_activation(
            x, self.A, self.B, top_k=self.A.shape[0], tau=1.0,
            base_weight=self.base_layer.weight, base_bias=self.base_layer.bias, gate=gate, backend=self.backend,
        )

    def activated_params(self) -> float:
        """Expert parameters that multiply one token: the router's rows and the top-k experts' A and B."""
        d_in, d_out = self.base_layer.in_features, self.base_layer.out_features
        k = min(self.router.top_k, self.num_experts)
        return self.num_experts * d_in + k * self.rank * (d_in + d_out)
