"""MoE-adapters: a shared pool of adapter experts beside each block's MLP, one router per task.

MoE-Adapters4CL (Yu et al., CVPR 2024): ``mlp(x) + sum_e g_e(x) adapter_e(x)`` where g is
the noisy top-k gate of the *current task's* router over the whole pool. Routers of past
tasks are frozen; at test time the method picks each sample's task (its autoencoder
selector) and sets ``task`` here: a long tensor (N,) of router indices, -1 meaning
"no adapters" (the frozen model). Tokens are batch-first (N, L, d), as in SEMA's pool.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from moecl.experts.adapters import FunctionalAdapter
from moecl.experts.routing import Router
from moecl.experts.wrapper import ExpertWrapper


class TaskRoutedAdapters(ExpertWrapper):
    """A block's MLP plus ``num_experts`` adapters mixed per token by the selected task's router."""

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int, num_experts: int, make_router: Callable[[], Router]) -> None:
        super().__init__(mlp)
        w = next(mlp.parameters())
        self.adapters = nn.ModuleList(FunctionalAdapter(dim, bottleneck).to(w.device, w.dtype) for _ in range(num_experts))
        self.routers = nn.ModuleList()
        self.make_router = make_router
        self.task: torch.Tensor | int | None = None  # router per sample (or one for all); None / -1: frozen model

    def add_task(self) -> Router:
        """A new router over the pool for the next task; earlier routers are frozen."""
        for router in self.routers:
            router.requires_grad_(False)
        router = self.make_router()
        router.add_experts(0, len(self.adapters))
        self.routers.append(router.to(next(self.adapters.parameters()).device))
        return router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.task is None or not len(self.routers):
            return out
        task = torch.full((x.shape[0],), self.task, device=x.device) if isinstance(self.task, int) else self.task
        gates = x.new_zeros(*x.shape[:-1], len(self.adapters))
        for t in task.unique().tolist():
            if t >= 0:
                rows = task == t
                gates[rows] = self.routers[t](x[rows])
        if not gates.any():
            return out
        mix = torch.stack([adapter(x) for adapter in self.adapters], -1)  # (..., d, E)
        return out + (mix * gates.unsqueeze(-2)).sum(-1)

    def activated_params(self) -> int:
        """Expert parameters that multiply one routed token: one router's score rows and its top-k adapters."""
        if not len(self.routers):
            return 0
        k = min(self.routers[-1].top_k, len(self.adapters))
        per_adapter = sum(p.numel() for p in self.adapters[0].parameters())
        return self.routers[-1].num_experts * self.routers[-1].d_in + k * per_adapter
