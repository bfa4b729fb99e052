"""A linear layer's update as a growing set of gated rank-1 experts (atoms).

y = W0 x + B_all (p * w), p = A_all x. The gate w has three modes (design.md "Methods /
MoRA" and "Rank-wise family"):

- ``self`` (MoRA, reference MoRAM_Linear): each atom's own normalised activation, top-k,
  softmax with temperature, optional pruning.
- ``router`` (SMoRA): a learned linear router over the atoms picks the top-k ranks per
  token (softmax over the chosen scores), with the router's balancing options.
- ``fly`` (FlyLoRA): A is a frozen sparse random projection that doubles as the implicit
  router: the top-k atoms by |A x| get weight 1, the rest 0; only B trains.

Atoms are stored per task (``A["task3"]``) so a task's experts keep their names in state
dicts; earlier tasks' atoms (and router rows) are frozen and keep competing for activation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from moecl.experts.routing import Router, coefficient_of_variation, update_select_bias
from moecl.experts.wrapper import ExpertWrapper
from moecl.kernels import rank_gate, sparse_rank_activation

GATES = ("self", "router", "fly")


def fly_nonzeros(cols: int, density: float) -> int:
    """Nonzeros per row of FlyLoRA's A: round(density * cols), at least 1."""
    return max(1, round(density * cols))


def sparse_random_projection(rows: int, cols: int, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """FlyLoRA's frozen A: each row has round(density * cols) (at least 1) N(0, 1/nnz) entries, the rest 0."""
    nnz = fly_nonzeros(cols, density)
    a = torch.zeros(rows, cols)
    for i in range(rows):
        where = torch.randperm(cols, generator=generator)[:nnz]
        a[i, where] = torch.randn(nnz, generator=generator) / math.sqrt(nnz)
    return a


def fly_gate(p: torch.Tensor, top_k: int, select_bias: torch.Tensor | None = None) -> torch.Tensor:
    """FlyLoRA's implicit routing: weight 1 on the top-k atoms by |p| (+ balancing bias), 0 elsewhere."""
    score = p.abs() if select_bias is None else p.abs() + select_bias
    index = torch.topk(score, min(top_k, p.shape[-1]), dim=-1).indices
    return torch.zeros_like(p).scatter(-1, index, 1.0)


class Rank1Linear(ExpertWrapper):
    """A frozen nn.Linear plus gated rank-1 atoms.

    Args:
        base_layer: the frozen linear layer W0.
        top_k: activation budget: at most ``top_k`` atoms per token get weight.
        tau: softmax temperature of the self gate.
        delta: rank-pruning threshold on p_hat for the self gate (None or <= 0: off).
        prune_in_training: also prune while training (the reference prunes at evaluation only).
        backend: kernel backend for ``moecl.kernels.sparse_rank_activation``.
        gate: one of GATES.
        router: the rank router (``gate="router"``; its ``top_k`` is the budget).
        density: fraction of nonzeros per row of FlyLoRA's frozen A (``gate="fly"``).
        bias_rate: FlyLoRA's auxiliary-loss-free balancing step (0: off).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        top_k: int,
        tau: float,
        delta: float | None = None,
        prune_in_training: bool = False,
        backend: str = "auto",
        gate: str = "self",
        router: Router | None = None,
        density: float = 0.1,
        bias_rate: float = 0.0,
    ) -> None:
        super().__init__(base_layer)
        if gate not in GATES:
            raise ValueError(f"gate={gate!r} is not allowed; choose one of: {', '.join(GATES)}")
        if (gate == "router") != (router is not None):
            raise ValueError("gate='router' needs a router, and only it takes one")
        self.gate = gate
        self.router = router
        self.density = density
        self.bias_rate = bias_rate
        self.register_buffer("select_bias", torch.zeros(0))  # fly: per-atom balancing bias (selection only)
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
        """Append ``rank`` atoms for ``task`` (B zero) and freeze all earlier ones (and router rows).

        A is kaiming-uniform and trains, except under ``fly``: sparse random and frozen.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        w = self.base_layer.weight
        d_in = self.base_layer.in_features
        if self.gate == "fly":
            a = sparse_random_projection(rank, d_in, self.density).to(w.device, w.dtype)
        else:
            a = torch.empty(rank, d_in, device=w.device, dtype=w.dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.A[f"task{task}"] = nn.Parameter(a, requires_grad=self.gate != "fly")
        self.B[f"task{task}"] = nn.Parameter(torch.zeros(self.base_layer.out_features, rank, device=w.device, dtype=w.dtype))
        self.select_bias = torch.cat([self.select_bias, torch.zeros(rank, device=w.device)])
        if self.router is not None:
            self.router.add_experts(task, rank)

    def _delta(self) -> float | None:
        """Pruning threshold now: the self gate's, at evaluation (or also in training when asked)."""
        if self.gate != "self":
            return None
        return self.delta if (not self.training or self.prune_in_training) else None

    def external_gate(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """The router / fly gate (..., R); None for the self gate (the kernel computes it)."""
        if self.gate == "router":
            return self.router(x)
        if self.gate == "fly":
            with torch.no_grad():
                g = fly_gate(x @ a.t(), self.top_k, self.select_bias if self.bias_rate > 0 else None)
            if self.training and self.bias_rate > 0:
                update_select_bias(self.select_bias, g.reshape(-1, g.shape[-1]).sum(0), self.bias_rate)
            return g
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.A:
            return self.base_layer(x)
        a = torch.cat(list(self.A.values()), dim=0)
        b = torch.cat(list(self.B.values()), dim=1)
        gate = self.external_gate(x, a)
        if self.usage is not None:
            with torch.no_grad():
                self.usage.update(*self._selection(x @ a.t(), gate))
        return sparse_rank_activation(
            x, a, b, top_k=self.top_k, tau=self.tau, delta=self._delta(),
            base_weight=self.base_layer.weight, base_bias=self.base_layer.bias, gate=gate, backend=self.backend,
        )

    def activated_params(self, active_ranks: float) -> float:
        """Expert parameters that multiply one token, given its mean number of active ranks.

        self: every atom's A row (the gate needs all of p) and the active B columns;
        router: the router's rows and the active atoms' A rows and B columns;
        fly: the nonzeros of every A row and the active B columns.
        """
        d_in, d_out, r = self.base_layer.in_features, self.base_layer.out_features, self.num_atoms
        if self.gate == "router":
            return r * d_in + active_ranks * (d_in + d_out)
        if self.gate == "fly":
            return r * fly_nonzeros(d_in, self.density) + active_ranks * d_out
        return r * d_in + active_ranks * d_out

    def _selection(self, p: torch.Tensor, gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(atoms in each token's top-k, their gate weights) for the usage statistics."""
        if gate is not None:
            return gate > 0, gate
        w = rank_gate(p, self.top_k, self.tau, self._delta())
        # top-k membership before pruning (pruned atoms were chosen, then zeroed), with the gate's tie rule
        k = min(self.top_k, p.shape[-1])
        index = torch.sort(F.normalize(p, dim=-1), dim=-1, descending=True, stable=True).indices[..., :k]
        return torch.zeros_like(p, dtype=torch.bool).scatter(-1, index, True), w


class RankUsage:
    """Counts, per atom, the tokens whose top-k holds it, and the active ranks per token."""

    def __init__(self, num_atoms: int) -> None:
        self.in_top_k = torch.zeros(num_atoms, dtype=torch.float64)
        self.active = 0.0
        self.tokens = 0

    def update(self, chosen: torch.Tensor, weights: torch.Tensor) -> None:
        """``chosen``: bool (..., R) top-k membership; ``weights``: the gate (nonzero = active)."""
        chosen = chosen.reshape(-1, chosen.shape[-1])
        self.in_top_k += chosen.sum(0).double().cpu()
        self.active += float((weights != 0).sum())
        self.tokens += chosen.shape[0]

    def utilisation(self) -> list[float]:
        return (self.in_top_k / max(self.tokens, 1)).tolist()

    def load_cv(self) -> float:
        """Coefficient of variation of per-atom load (std / mean; 0 when balanced)."""
        return coefficient_of_variation(self.in_top_k)

    def active_ranks_per_token(self) -> float:
        return self.active / max(self.tokens, 1)
