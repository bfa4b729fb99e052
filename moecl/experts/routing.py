"""Top-k routing over experts, its load-balancing options and load statistics.

Every routed method (SMoRA's rank router, MixLoRA, LoRAMoE, MoE-adapters) gates with
a ``Router``. Balancing modes (design.md "Rank-wise family"):

- ``aux``: the auxiliary loss on each micro-batch's own statistics.
- ``global``: the same loss with the load f_i gathered over the global batch: the last
  ``window`` micro-batches and, under torch.distributed, every rank ("Demons in the
  Detail", Qiu et al. 2025). A micro-batch then need not be balanced on its own.
- ``bias``: auxiliary-loss-free balancing (Wang et al. 2024, DeepSeek-V3): a per-expert
  bias added to the scores used to choose the top-k only; the gate values come from the
  unbiased scores, so the bias changes which experts run but never the outputs' scale.
  After each training micro-batch, b_i += rate * sign(mean load - load_i).
- ``none``.

The loss is Switch's ``E * sum_i f_i P_i`` (f: fraction of routed slots, P: mean gate
probability) or, with ``formula="cv"``, the CV^2 of importance plus the CV^2 of load
(Shazeer et al. 2017; MoE-adapters use it). With ``groups`` > 1 the experts are split into
equal groups and the loss is computed within each group and summed (LoRAMoE's localized
balancing). Routers, unlike PEFT layers, have no library implementation that exposes
these options and grows per task, so this module is written here.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

BALANCE_MODES = ("none", "aux", "global", "bias")
FORMULAS = ("switch", "cv")


def top_k_gate(scores: torch.Tensor, top_k: int, select_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the top-k ``scores`` per row (others 0); ``select_bias`` shifts only the choice."""
    choose = scores if select_bias is None else scores + select_bias
    k = min(top_k, scores.shape[-1])
    index = torch.topk(choose, k, dim=-1).indices
    masked = torch.full_like(scores, float("-inf")).scatter(-1, index, scores.gather(-1, index))
    return torch.softmax(masked, dim=-1)


def coefficient_of_variation(load: torch.Tensor) -> float:
    """std / mean of per-expert load (0: perfectly balanced); population std, as the papers use."""
    load = load.double()
    mean = load.mean()
    return float(load.std(unbiased=False) / mean) if mean > 0 else 0.0


@torch.no_grad()
def update_select_bias(bias: torch.Tensor, load: torch.Tensor, rate: float) -> None:
    """Auxiliary-loss-free balancing step, in place: b_i += rate * sign(mean load - load_i)."""
    bias += rate * torch.sign(load.mean() - load)


def balance_loss(probs: torch.Tensor, routed: torch.Tensor, formula: str, groups: int = 1) -> torch.Tensor:
    """Auxiliary balancing loss from gate probabilities (N, E) and routed slots f (E,) (fractions, no grad).

    Computed within each of ``groups`` equal groups of experts and summed.
    """
    total = probs.new_zeros(())
    for p, f in zip(probs.chunk(groups, dim=-1), routed.chunk(groups, dim=-1)):
        size = p.shape[-1]
        if size < 2:
            continue
        if formula == "switch":
            # f and P both normalised within the group: 1 when uniform, up to `size` when collapsed.
            total = total + size * (f / f.sum().clamp_min(1e-9) * (p.mean(0) / p.mean(0).sum().clamp_min(1e-9))).sum()
        else:
            importance = p.sum(0)
            load = (p > 0).to(p.dtype).sum(0)
            total = total + _cv_squared(importance) + _cv_squared(load)
    return total


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    return x.var(unbiased=False) / (x.mean() ** 2 + 1e-10)


class Router(nn.Module):
    """Linear top-k router over a growing set of experts.

    Score rows are stored per task (``weight["task2"]``) like the experts they route, so
    a continual method appends rows for a task's new experts and freezes the old ones.

    Args:
        d_in: input width.
        top_k: experts per token (>= number of experts: dense softmax).
        balance: one of BALANCE_MODES.
        formula: "switch" or "cv" (the auxiliary loss of ``aux`` / ``global``).
        groups: localized balancing over this many equal expert groups.
        noisy: Shazeer's noisy top-k gating while training (a learned noise scale).
        bias_rate: step of the auxiliary-loss-free bias update.
        window: micro-batches that make up the global batch for ``global``.
    """

    def __init__(
        self,
        d_in: int,
        top_k: int,
        balance: str = "aux",
        formula: str = "switch",
        groups: int = 1,
        noisy: bool = False,
        bias_rate: float = 1e-3,
        window: int = 8,
    ) -> None:
        super().__init__()
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance={balance!r} is not allowed; choose one of: {', '.join(BALANCE_MODES)}")
        if formula not in FORMULAS:
            raise ValueError(f"formula={formula!r} is not allowed; choose one of: {', '.join(FORMULAS)}")
        self.d_in, self.top_k, self.balance, self.formula = d_in, top_k, balance, formula
        self.groups, self.noisy, self.bias_rate, self.window = groups, noisy, bias_rate, window
        self.weight = nn.ParameterDict()
        self.noise = nn.ParameterDict()
        self.register_buffer("select_bias", torch.zeros(0))
        self.aux_loss: torch.Tensor | None = None
        self._recent_load: list[torch.Tensor] = []
        self.counts: torch.Tensor | None = None  # per-expert load while counting (evaluation statistics)

    @property
    def num_experts(self) -> int:
        return sum(w.shape[0] for w in self.weight.values())

    def add_experts(self, task: int, n: int) -> None:
        """Append score rows for ``n`` new experts of ``task``; earlier rows are frozen."""
        for p in self.parameters():
            p.requires_grad_(False)
        ref = self.select_bias
        w = torch.empty(n, self.d_in, device=ref.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight[f"task{task}"] = nn.Parameter(w)
        if self.noisy:
            self.noise[f"task{task}"] = nn.Parameter(torch.zeros(n, self.d_in, device=ref.device))
        self.select_bias = torch.cat([self.select_bias, torch.zeros(n, device=ref.device)])
        self._recent_load = []  # the global batch restarts with the new expert count

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        logits = x @ torch.cat(list(self.weight.values())).t()
        if self.noisy and self.training:
            scale = F.softplus(x @ torch.cat(list(self.noise.values())).t())
            logits = logits + torch.randn_like(logits) * scale
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate (..., E): softmax weights on each token's top-k experts, 0 elsewhere."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        scores = self.scores(x2)
        bias = self.select_bias if self.balance == "bias" else None
        gate = top_k_gate(scores, self.top_k, bias)
        routed = (gate > 0).to(gate.dtype)
        if self.counts is not None:
            # load: tokens routed to each expert; a dense router routes every token everywhere, so its gate mass
            self.counts += (gate if self.top_k >= gate.shape[-1] else routed).sum(0).detach().double().cpu()
        if self.training:
            self._balance(torch.softmax(scores, dim=-1), gate, routed)
        return gate.reshape(*lead, gate.shape[-1])

    def _balance(self, probs: torch.Tensor, gate: torch.Tensor, routed: torch.Tensor) -> None:
        load = routed.sum(0).detach()
        self.aux_loss = None
        if self.balance == "bias":
            update_select_bias(self.select_bias, load, self.bias_rate)
            return
        if self.balance == "none":
            return
        if self.balance == "global":
            self._recent_load = (self._recent_load + [load])[-self.window:]
            load = torch.stack(self._recent_load).sum(0)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                load = load.clone()
                torch.distributed.all_reduce(load)
        # CV uses the sparse gate (importance of what ran); Switch uses the dense probabilities.
        self.aux_loss = balance_loss(gate if self.formula == "cv" else probs, load / load.sum().clamp_min(1), self.formula, self.groups)

    def new_counts(self) -> torch.Tensor:
        """Zero per-expert token counts; assign to ``counts`` to start counting."""
        return torch.zeros(self.num_experts, dtype=torch.float64)

    def load_cv(self) -> float | None:
        """Coefficient of variation of the counted per-expert load (None before counting)."""
        return None if self.counts is None else coefficient_of_variation(self.counts)
