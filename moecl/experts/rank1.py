"""MoRA: a linear layer's update as a growing set of self-gated rank-1 experts.

y = W0 x + B_all (p * w), p = A_all x, w = self gate of p (design.md "Methods / MoRA",
reference: MoRAM_Linear). Atoms are stored per task (``A["task3"]``) so a task's
experts keep their names in state dicts; earlier tasks' atoms are frozen and keep
competing for activation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from moecl.experts.wrapper import ExpertWrapper
from moecl.kernels import rank_gate, sparse_rank_activation


class Rank1Linear(ExpertWrapper):
    """A frozen nn.Linear plus rank-1 atoms gated by their own normalised activation.

    Args:
        base_layer: the frozen linear layer W0.
        top_k: activation budget: at most ``top_k`` atoms per token get weight.
        tau: softmax temperature of the gate.
        delta: rank-pruning threshold on p_hat (None or <= 0: off).
        prune_in_training: also prune while training (the reference prunes at evaluation only).
        backend: kernel backend for ``moecl.kernels.sparse_rank_activation``.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        top_k: int,
        tau: float,
        delta: float | None = None,
        prune_in_training: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(base_layer)
        self.top_k = top_k
        self.tau = tau
        self.delta = delta if delta and delta > 0 else None
        self.prune_in_training = prune_in_training
        self.backend = backend
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.usage: "RankUsage | None" = None

    @property
    def num_atoms(self) -> int:
        return sum(a.shape[0] for a in self.A.values())

    def add_atoms(self, task: int, rank: int) -> None:
        """Append ``rank`` trainable atoms for ``task`` (A kaiming-uniform, B zero) and freeze all earlier ones."""
        for p in self.parameters():
            p.requires_grad_(False)
        w = self.base_layer.weight
        a = torch.empty(rank, self.base_layer.in_features, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.A[f"task{task}"] = nn.Parameter(a)
        self.B[f"task{task}"] = nn.Parameter(torch.zeros(self.base_layer.out_features, rank, device=w.device, dtype=w.dtype))

    def _delta(self) -> float | None:
        return self.delta if (not self.training or self.prune_in_training) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.A:
            return self.base_layer(x)
        a = torch.cat(list(self.A.values()), dim=0)
        b = torch.cat(list(self.B.values()), dim=1)
        if self.usage is not None:
            with torch.no_grad():
                self.usage.update(x @ a.t(), self.top_k, self.tau, self._delta())
        return sparse_rank_activation(
            x, a, b, top_k=self.top_k, tau=self.tau, delta=self._delta(),
            base_weight=self.base_layer.weight, base_bias=self.base_layer.bias, backend=self.backend,
        )


class RankUsage:
    """Counts, per atom, the tokens whose top-k holds it, and the active ranks per token."""

    def __init__(self, num_atoms: int) -> None:
        self.in_top_k = torch.zeros(num_atoms, dtype=torch.float64)
        self.active = 0.0
        self.tokens = 0

    def update(self, p: torch.Tensor, top_k: int, tau: float, delta: float | None) -> None:
        p = p.reshape(-1, p.shape[-1])
        w = rank_gate(p, top_k, tau, delta)
        index = torch.topk(F.normalize(p, dim=-1), min(top_k, p.shape[-1]), dim=-1).indices
        self.in_top_k += torch.zeros_like(p, dtype=torch.float64).scatter_(-1, index, 1.0).sum(0).cpu()
        self.active += float((w > 0).sum())
        self.tokens += p.shape[0]

    def utilisation(self) -> list[float]:
        return (self.in_top_k / max(self.tokens, 1)).tolist()

    def active_ranks_per_token(self) -> float:
        return self.active / max(self.tokens, 1)
