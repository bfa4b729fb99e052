"""Sparse rank activation: the gated rank-1 expert branch of a linear layer.

``sparse_rank_activation`` is the one entry every rank-1 layer calls. Its signature
is stable: the torch reference serves CPUs, the Triton kernels serve CUDA tensors.
"""
from __future__ import annotations

import os

import torch

from moecl.kernels.reference import rank_gate, sparse_rank_activation_reference

BACKENDS = ("auto", "torch", "triton")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_available() -> bool:
    """True when Triton imports and a Triton path exists for this build."""
    try:
        from moecl.kernels import triton_rank  # noqa: F401
    except ImportError:
        return False
    return True


def sparse_rank_activation(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    top_k: int,
    tau: float,
    delta: float | None = None,
    base_weight: torch.Tensor | None = None,
    base_bias: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Gated rank-1 experts, optionally fused with the frozen base layer.

    Args:
        x: tokens (..., d_in).
        a: atoms' down-projections A (R, d_in).
        b: atoms' up-projections B (d_out, R).
        top_k: activation budget k: at most k atoms per token get weight.
        tau: softmax temperature (> 0).
        delta: rank-pruning threshold on p_hat (None: no pruning).
        base_weight, base_bias: the frozen W0 (d_out, d_in) and bias; when given the
            result is the whole layer x W0^T + bias + branch.
        gate: an externally computed gate (..., R) (routed methods) instead of the self gate.
        backend: "auto" (Triton on CUDA tensors, torch otherwise), "torch" or "triton".

    Returns:
        (..., d_out): the branch (p * w) B^T, plus the base output when ``base_weight`` is given.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of: {', '.join(BACKENDS)}")
    if backend == "triton" and not (x.is_cuda or interpreting()):
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for testing); use backend='auto' or 'torch'")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    g2 = None if gate is None else gate.reshape(-1, gate.shape[-1])
    use_triton = backend == "triton" or (backend == "auto" and x.is_cuda and triton_available())
    if use_triton:
        from moecl.kernels.triton_rank import sparse_rank_activation_triton

        y = sparse_rank_activation_triton(x2, a, b, top_k, tau, delta, base_weight, base_bias, g2)
    else:
        y = sparse_rank_activation_reference(x2, a, b, top_k, tau, delta, base_weight, base_bias, g2)
    return y.reshape(*lead, y.shape[-1])


__all__ = ["BACKENDS", "interpreting", "rank_gate", "sparse_rank_activation", "sparse_rank_activation_reference", "triton_available"]
