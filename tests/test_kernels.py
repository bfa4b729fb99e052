"""Triton sparse rank activation against the fp64 torch reference, under TRITON_INTERPRET=1 on CPU."""
import os

import pytest
import torch

assert os.environ.get("TRITON_INTERPRET") == "1"  # set in conftest.py before triton is imported
triton_rank = pytest.importorskip("moecl.kernels.triton_rank")

from moecl.kernels import rank_gate, sparse_rank_activation, sparse_rank_activation_reference  # noqa: E402


def inputs(N, d, R, d_out=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=dtype)
    a = torch.randn(R, d, generator=g, dtype=dtype) / d**0.5
    b = torch.randn(d_out, R, generator=g, dtype=dtype) / R**0.5
    w0 = torch.randn(d_out, d, generator=g, dtype=dtype) / d**0.5
    bias = torch.randn(d_out, generator=g, dtype=dtype)
    return x, a, b, w0, bias


def run_both(x, a, b, w0, bias, top_k, tau, delta, gate=None):
    """(y, dx, da, db[, dgate]) from Triton in x's dtype and from the fp64 reference."""
    dy = torch.randn(x.shape[0], b.shape[0], generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    outs = []
    for fn, dtype in ((triton_rank.sparse_rank_activation_triton, x.dtype), (sparse_rank_activation_reference, torch.float64)):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, a, b)]
        g = gate.detach().to(dtype).requires_grad_(True) if gate is not None else None
        y = fn(*leaves, top_k, tau, delta, w0.to(dtype), bias.to(dtype), g)
        y.backward(dy.to(dtype))
        outs.append([y.detach(), *(t.grad for t in leaves), *((g.grad,) if g is not None else ())])
    return outs


def assert_close(got, ref, tol=1e-4):
    for name, g, r in zip(("y", "dx", "da", "db", "dgate"), got, ref):
        err = (g.double() - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("d", [100, 600, 2049])
@pytest.mark.parametrize("N", [1, 7, 1000])
def test_matches_fp64_reference_on_awkward_shapes(N, d):
    x, a, b, w0, bias = inputs(N, d, R=37)
    got, ref = run_both(x, a, b, w0, bias, top_k=5, tau=0.1, delta=0.05)
    assert_close(got, ref)


@pytest.mark.parametrize("R, top_k", [(20, 20), (37, 2), (5, 16)])
def test_budget_edges_all_ranks_and_few(R, top_k):
    # top_k >= R: every rank active; top_k = 2 with R = 37; top_k > R is clamped to R
    x, a, b, w0, bias = inputs(300, 100, R)
    got, ref = run_both(x, a, b, w0, bias, top_k=top_k, tau=0.5, delta=None)
    assert_close(got, ref)


def test_rows_with_one_active_rank_after_pruning():
    x, a, b, w0, bias = inputs(200, 64, 20)
    p_hat = torch.nn.functional.normalize(x.double() @ a.double().t(), dim=-1)
    delta = float(p_hat.max(-1).values.min()) - 1e-3  # some rows keep exactly one rank
    w = rank_gate(x.double() @ a.double().t(), 4, 0.2, delta)
    assert int(((w > 0).sum(-1) == 1).sum()) > 0
    got, ref = run_both(x, a, b, w0, bias, top_k=4, tau=0.2, delta=delta)
    assert_close(got, ref)


def test_ties_pick_the_lower_atom_index():
    x, a, b, w0, bias = inputs(50, 32, 8)
    a[4] = a[1]  # atoms 1 and 4 always tie
    a[6] = a[1]
    got, ref = run_both(x, a, b, w0, bias, top_k=2, tau=0.3, delta=None)
    assert_close(got, ref)


def test_zero_tokens_and_external_gate():
    x, a, b, w0, bias = inputs(40, 48, 12)
    x[3] = 0.0  # a token with P = 0: the normalisation's eps branch
    gate = torch.softmax(torch.randn(40, 12, generator=torch.Generator().manual_seed(3)), -1)
    assert_close(*run_both(x, a, b, w0, bias, top_k=3, tau=0.2, delta=0.1))
    assert_close(*run_both(x, a, b, w0, bias, top_k=3, tau=0.2, delta=None, gate=gate))


def test_sharp_reference_temperature():
    # tau = 0.01 (MoRA's default) amplifies fp32 rounding by 1/tau in the gradient
    x, a, b, w0, bias = inputs(256, 128, 32)
    assert_close(*run_both(x, a, b, w0, bias, top_k=16, tau=0.01, delta=0.2), tol=1e-3)


def test_entry_dispatches_by_backend_and_keeps_leading_dims():
    x, a, b, w0, bias = inputs(12, 16, 6)
    x3 = x.view(3, 4, 16)
    kw = dict(top_k=3, tau=0.2, delta=0.1, base_weight=w0, base_bias=bias)
    y_t = sparse_rank_activation(x3, a, b, backend="triton", **kw)
    y_r = sparse_rank_activation(x3, a, b, backend="torch", **kw)
    assert y_t.shape == (3, 4, 24)
    torch.testing.assert_close(y_t, y_r, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="auto, torch, triton"):
        sparse_rank_activation(x3, a, b, backend="cuda", **kw)


def test_torch_path_gradcheck_fp64():
    x, a, b, w0, bias = (t.double() for t in inputs(5, 6, 4, d_out=3))
    x.requires_grad_(True), a.requires_grad_(True), b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, a, b: sparse_rank_activation_reference(x, a, b, 2, 0.5, None, w0, bias), (x, a, b)
    )


def test_kernel_benchmark_plumbing_dry_run(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "k.json"
    script = Path(__file__).parents[1] / "benchmarks" / "kernel_bench.py"
    done = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert {r["variant"] for r in result["rows"]} == {
        "triton_branch", "torch_branch", "dense_lora_branch", "triton_layer", "torch_layer", "dense_lora_layer", "base_gemm"
    }
    assert all(r["ms"] > 0 for r in result["rows"]) and result["ratios"]
    assert out.with_suffix(".png").is_file()
