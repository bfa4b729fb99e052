"""Triton kernels for the sparse rank activation (design.md, "Kernel").

Forward: one kernel computes, per tile of tokens, P = X A^T (looping over d_in), the
normalisation, the top-k selection, the temperature softmax, the optional pruning and
H = P * G, without writing the gate logits to memory; the expand H B^T is added in
place onto the base GEMM's output (cuBLAS addmm). Backward: cuBLAS gives dH = dY B;
one kernel turns (dH, P, softmax) into dP and H row by row (normalisation, top-k
softmax, pruning); cuBLAS then gives dX = dP A (+ dY W0), dA = dP^T X, dB = dY^T H.
All reductions are either inside a row or cuBLAS GEMMs: no float atomics, so the
weight gradients are deterministic.

Top-k ties are broken towards the lower atom index, as the reference does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EPS = 1e-12  # F.normalize's eps


@triton.jit
def _forward_kernel(
    X, A, GATE, P_OUT, S_OUT, H_OUT,
    N, D, R,
    stride_xn, stride_ad, stride_gn, stride_on,
    top_k, inv_tau, delta,
    HAS_GATE: tl.constexpr, PRUNE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_R)
    row_ok = rows < N
    col_ok = cols < R
    both_ok = row_ok[:, None] & col_ok[None, :]
    p = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + rows[:, None] * stride_xn + ds[None, :], mask=row_ok[:, None] & (ds[None, :] < D), other=0.0)
        a_t = tl.load(A + cols[None, :] * stride_ad + ds[:, None], mask=col_ok[None, :] & (ds[:, None] < D), other=0.0)
        p += tl.dot(x, a_t, input_precision=PRECISION)
    offs = rows[:, None] * stride_on + cols[None, :]
    if HAS_GATE:
        g = tl.load(GATE + rows[:, None] * stride_gn + cols[None, :], mask=both_ok, other=0.0).to(tl.float32)
    else:
        norm = tl.sqrt(tl.sum(p * p, axis=1))
        p_hat = p / tl.maximum(norm, 1e-12)[:, None]
        remaining = tl.where(col_ok[None, :], p_hat, float("-inf"))
        kept = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
        for _ in range(top_k):
            best = tl.max(remaining, axis=1)
            first = tl.min(tl.where(remaining == best[:, None], cols[None, :], BLOCK_R), axis=1)
            hit = cols[None, :] == first[:, None]
            kept = tl.where(hit, 1.0, kept)
            remaining = tl.where(hit, float("-inf"), remaining)
        logits = tl.where(kept > 0, p_hat * inv_tau, float("-inf"))
        e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        s = e / tl.sum(e, axis=1)[:, None]
        tl.store(S_OUT + offs, s, mask=both_ok)
        g = s
        if PRUNE:
            g = tl.where(p_hat >= delta, s, 0.0)
    tl.store(P_OUT + offs, p, mask=both_ok)
    tl.store(H_OUT + offs, (p * g).to(H_OUT.dtype.element_ty), mask=both_ok)


@triton.jit
def _backward_kernel(
    DH, P, S, GATE, DP_OUT, H_OUT, DGATE_OUT,
    N, R,
    stride_dhn, stride_on, stride_gn,
    inv_tau, delta,
    HAS_GATE: tl.constexpr, PRUNE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_R)
    ok = (rows < N)[:, None] & (cols < R)[None, :]
    offs = rows[:, None] * stride_on + cols[None, :]
    dh = tl.load(DH + rows[:, None] * stride_dhn + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    p = tl.load(P + offs, mask=ok, other=0.0)
    if HAS_GATE:
        g = tl.load(GATE + rows[:, None] * stride_gn + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(DGATE_OUT + offs, dh * p, mask=ok)
        dp = dh * g
    else:
        s = tl.load(S + offs, mask=ok, other=0.0)
        norm = tl.sqrt(tl.sum(p * p, axis=1))
        n = tl.maximum(norm, 1e-12)
        p_hat = p / n[:, None]
        g = s
        ds = dh * p
        if PRUNE:
            keep = p_hat >= delta
            g = tl.where(keep, s, 0.0)
            ds = tl.where(keep, ds, 0.0)
        # softmax over the kept entries (s is 0 elsewhere, so they get no gradient)
        dlogit = s * (ds - tl.sum(ds * s, axis=1)[:, None])
        dp_hat = dlogit * inv_tau
        # p_hat = p / max(||p||, eps): the clamp passes no gradient to the norm
        radial = tl.where(norm > 1e-12, tl.sum(dp_hat * p_hat, axis=1), 0.0)
        dp = dh * g + (dp_hat - p_hat * radial[:, None]) / n[:, None]
    tl.store(DP_OUT + offs, dp, mask=ok)
    tl.store(H_OUT + offs, (p * g).to(H_OUT.dtype.element_ty), mask=ok)


def _blocks(R: int) -> tuple[int, int]:
    block_r = max(16, triton.next_power_of_2(R))
    return (64 if block_r <= 64 else 32 if block_r <= 128 else 16), block_r


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def gate_forward(x: torch.Tensor, a: torch.Tensor, gate: torch.Tensor | None, top_k: int, tau: float, delta: float | None):
    """P (fp32), softmax before pruning (fp32; empty with an external gate) and H (x's dtype)."""
    N, D = x.shape
    R = a.shape[0]
    block_n, block_r = _blocks(R)
    p = torch.empty(N, R, device=x.device, dtype=torch.float32)
    s = torch.empty_like(p) if gate is None else p.new_empty(0)
    h = torch.empty(N, R, device=x.device, dtype=x.dtype)
    _forward_kernel[(triton.cdiv(N, block_n),)](
        x, a, gate if gate is not None else p, p, s, h,
        N, D, R,
        x.stride(0), a.stride(0), gate.stride(0) if gate is not None else 0, p.stride(0),
        min(top_k, R), 1.0 / tau, float(delta) if delta is not None else 0.0,
        HAS_GATE=gate is not None, PRUNE=delta is not None, PRECISION=_precision(x.dtype),
        BLOCK_N=block_n, BLOCK_D=64 if D >= 64 else 16, BLOCK_R=block_r,
    )
    return p, s, h


def gate_backward(dh: torch.Tensor, p: torch.Tensor, s: torch.Tensor, gate: torch.Tensor | None, tau: float, delta: float | None, h_dtype: torch.dtype):
    """dP (fp32), H (h_dtype) and, with an external gate, dGate (fp32)."""
    N, R = p.shape
    block_n, block_r = _blocks(R)
    dp = torch.empty_like(p)
    h = torch.empty(N, R, device=p.device, dtype=h_dtype)
    dgate = torch.empty_like(p) if gate is not None else p.new_empty(0)
    _backward_kernel[(triton.cdiv(N, block_n),)](
        dh, p, s, gate if gate is not None else p, dp, h, dgate,
        N, R,
        dh.stride(0), p.stride(0), gate.stride(0) if gate is not None else 0,
        1.0 / tau, float(delta) if delta is not None else 0.0,
        HAS_GATE=gate is not None, PRUNE=delta is not None,
        BLOCK_N=block_n, BLOCK_R=block_r,
    )
    return dp, h, (dgate if gate is not None else None)


class SparseRankActivation(torch.autograd.Function):
    """y = [x W0^T + bias] + (P * G) B^T with Triton gate kernels and cuBLAS products.

    W0 and bias, when given, are frozen: their output is computed once and the expand
    is added to it in place.
    """

    @staticmethod
    def forward(ctx, x, a, b, gate, base_weight, base_bias, top_k, tau, delta):
        x, a, b = x.contiguous(), a.contiguous(), b.contiguous()
        gate = gate.contiguous() if gate is not None else None
        p, s, h = gate_forward(x, a, gate, top_k, tau, delta)
        if base_weight is not None:
            y = torch.addmm(base_bias, x, base_weight.t()) if base_bias is not None else x @ base_weight.t()
            y.addmm_(h, b.t())
        else:
            y = h @ b.t()
        ctx.save_for_backward(x, a, b, gate, base_weight, p, s)
        ctx.tau, ctx.delta = tau, delta
        return y

    @staticmethod
    def backward(ctx, dy):
        x, a, b, gate, base_weight, p, s = ctx.saved_tensors
        dy = dy.contiguous()
        dh = dy @ b
        dp, h, dgate = gate_backward(dh, p, s, gate, ctx.tau, ctx.delta, x.dtype)
        dp = dp.to(x.dtype)
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = dp @ a
            if base_weight is not None:
                dx.addmm_(dy, base_weight)
        if ctx.needs_input_grad[1]:
            da = dp.t() @ x
        if ctx.needs_input_grad[2]:
            db = dy.t() @ h
        if dgate is not None:
            dgate = dgate.to(gate.dtype)
        return dx, da, db, dgate, None, None, None, None, None


def sparse_rank_activation_triton(x, a, b, top_k, tau, delta=None, base_weight=None, base_bias=None, gate=None):
    """2-D entry used by ``moecl.kernels.sparse_rank_activation``."""
    frozen_base = base_weight is None or not (base_weight.requires_grad or (base_bias is not None and base_bias.requires_grad))
    if frozen_base:
        return SparseRankActivation.apply(x, a, b, gate, base_weight, base_bias, top_k, tau, delta)
    # A trainable base layer: let autograd handle it, fuse only the branch.
    return torch.nn.functional.linear(x, base_weight, base_bias) + SparseRankActivation.apply(x, a, b, gate, None, None, top_k, tau, delta)
