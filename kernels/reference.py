"""PyTorch reference of the sparse rank activation (design.md, "Kernel").

This is the ground truth the Triton kernels are tested against and the path used on
CPUs. Shapes: x (N, d_in), a (R, d_in), b (d_out, R); returns (N, d_out).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def rank_gate(p: torch.Tensor, top_k: int, tau: float, delta: float | None = None) -> torch.Tensor:
    """MoRA's self-activation gate w from the atoms' activations p = x A^T.

    p_hat = p / ||p||_2; keep the top-k entries of p_hat, softmax(p_hat / tau) over them
    (the rest get weight 0); optionally w <- w * [p_hat >= delta] without renormalising
    (rank pruning, as the reference MoRAM_Linear does at evaluation).
    """
    p_hat = F.normalize(p, p=2, dim=-1)
    k = min(top_k, p.shape[-1])
    # A stable sort breaks ties towards the lower atom index (torch.topk leaves it
    # unspecified); the Triton kernel does the same, so both pick the same atoms.
    index = torch.sort(p_hat, dim=-1, descending=True, stable=True).indices[..., :k]
    masked = torch.full_like(p_hat, float("-inf")).scatter(-1, index, p_hat.gather(-1, index))
    w = torch.softmax(masked / tau, dim=-1)
    if delta is not None:
        w = w * (p_hat >= delta).to(w.dtype)
    return w


def sparse_rank_activation_reference(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    top_k: int,
    tau: float,
    delta: float | None = None,
    base_weight: torch.Tensor | None = None,
    base_bias: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = [x W0^T + bias] + (p * w) B^T with p = x A^T and w = gate or rank_gate(p)."""
    p = x @ a.t()
    w = rank_gate(p, top_k, tau, delta) if gate is None else gate
    y = (p * w) @ b.t()
    if base_weight is not None:
        y = y + F.linear(x, base_weight, base_bias)
    return y
