"""Sparse rank activation: Triton vs the torch reference, dense LoRA and the base GEMM.

    python benchmarks/kernel_bench.py                 # full sweep on a CUDA GPU
    python benchmarks/kernel_bench.py --quick         # the headline shapes only

Times forward and forward+backward with triton.testing.do_bench (medians), for the
gated branch alone and for the whole layer (base GEMM + branch). Peak figures come
from the same run: a large bf16 GEMM and a device-to-device copy. Writes
benchmarks/results/kernel_<device>.json and kernel_<device>.png.
``--dry-run`` checks the plumbing on CPU (TRITON_INTERPRET=1, tiny shapes, wall-clock
timer); its numbers are not measurements and go to --out only.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def timer(dry_run: bool):
    if dry_run:
        def wall(fn):
            fn()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times)
        return wall
    import triton.testing

    return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def measure_peaks(bench, device: str, dry_run: bool) -> dict:
    n = 256 if dry_run else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16 if not dry_run else torch.float32)
    ms = bench(lambda: a @ a)
    src = torch.empty(n * n * (8 if not dry_run else 1), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms_copy = bench(lambda: dst.copy_(src))
    return {"bf16_gemm_tflops": 2 * n**3 / ms / 1e9, "copy_gbps": 2 * src.numel() / ms_copy / 1e6}


def variants(x, a, b, w0, k, tau, delta):
    from moecl.kernels import sparse_rank_activation

    def branch(backend):
        return lambda: sparse_rank_activation(x, a, b, top_k=k, tau=tau, delta=delta, backend=backend)

    def layer(backend):
        return lambda: sparse_rank_activation(x, a, b, top_k=k, tau=tau, delta=delta, base_weight=w0, backend=backend)

    return {
        "triton_branch": branch("triton"),
        "torch_branch": branch("torch"),
        "dense_lora_branch": lambda: (x @ a.t()) @ b.t(),
        "triton_layer": layer("triton"),
        "torch_layer": layer("torch"),
        "dense_lora_layer": lambda: F.linear(x, w0) + (x @ a.t()) @ b.t(),
        "base_gemm": lambda: F.linear(x, w0),
    }


def flops_and_bytes(name: str, N: int, d: int, R: int, elem: int, backward: bool) -> tuple[float, float]:
    branch = 2 * N * d * R * 2
    base = 2 * N * d * d
    flops = {"base_gemm": base}.get(name, branch + (base if name.endswith("layer") else 0))
    # minimal traffic: read X, A, B (and W0), write Y
    io = N * d + 2 * R * d + N * d + (d * d if name.endswith(("layer", "gemm")) else 0)
    return flops * (3 if backward else 1), io * elem * (3 if backward else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=8192, d=4096, R in {16, 64}, k in {2, 4}, bf16")
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check under TRITON_INTERPRET=1")
    parser.add_argument("--out", default=None, help="output JSON (default benchmarks/results/kernel_<device>.json)")
    args = parser.parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, grid = "cpu", dict(N=[64], d=[96], R=[16], k=[2], dtype=["fp32"])
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: kernel_bench.py needs a CUDA GPU (use --dry-run to check it on CPU)")
        device = "cuda"
        grid = dict(N=[1024, 8192, 32768], d=[768, 4096], R=[16, 64, 256], k=[2, 4, 16], dtype=["bf16", "fp32"])
        if args.quick:
            grid = dict(N=[8192], d=[4096], R=[16, 64], k=[2, 4], dtype=["bf16"])
    name = "cpu-dry-run" if args.dry_run else torch.cuda.get_device_name(0)
    bench = timer(args.dry_run)
    peaks = measure_peaks(bench, device, args.dry_run)
    rows = []
    for N, d, R, k, dt in itertools.product(*grid.values()):
        if k > R:
            continue
        dtype = DTYPES[dt]
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(N, d, device=device, dtype=dtype, generator=g)
        a = (torch.randn(R, d, device=device, dtype=dtype, generator=g) / d**0.5).requires_grad_(True)
        b = (torch.randn(d, R, device=device, dtype=dtype, generator=g) / R**0.5).requires_grad_(True)
        w0 = torch.randn(d, d, device=device, dtype=dtype, generator=g) / d**0.5
        x.requires_grad_(True)
        dy = torch.randn(N, d, device=device, dtype=dtype, generator=g)
        for vname, fn in variants(x, a, b, w0, k, 0.01, 0.2).items():
            for backward in (False, True):
                if backward and vname == "base_gemm":
                    run = lambda fn=fn: torch.autograd.grad(F.linear(x, w0), x, dy)  # noqa: E731
                elif backward:
                    run = lambda fn=fn: torch.autograd.grad(fn(), (x, a, b), dy)  # noqa: E731
                else:
                    run = lambda fn=fn: fn()  # noqa: E731
                with torch.no_grad() if not backward else torch.enable_grad():
                    ms = bench(run)
                flops, nbytes = flops_and_bytes(vname, N, d, R, x.element_size(), backward)
                rows.append({
                    "N": N, "d": d, "R": R, "k": k, "dtype": dt, "pass": "fwd+bwd" if backward else "fwd", "variant": vname,
                    "ms": ms, "tflops": flops / ms / 1e9, "gbps": nbytes / ms / 1e6,
                    "frac_peak_flops": flops / ms / 1e9 / peaks["bf16_gemm_tflops"], "frac_peak_bw": nbytes / ms / 1e6 / peaks["copy_gbps"],
                })
        print(f"N={N} d={d} R={R} k={k} {dt}: done", flush=True)
    ratios = summarize(rows)
    out = Path(args.out or f"benchmarks/results/kernel_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "peaks": peaks, "rows": rows, "ratios": ratios}, indent=1))
    plot(ratios, out.with_suffix(".png"), name)
    for r in ratios:
        print(r)
    print(f"wrote {out}")


def summarize(rows: list[dict]) -> list[dict]:
    """Per shape: torch/Triton speedups of the branch, and the whole layer against the base GEMM."""
    index = {(r["N"], r["d"], r["R"], r["k"], r["dtype"], r["pass"], r["variant"]): r["ms"] for r in rows}
    out = []
    for (N, d, R, k, dt, ps, v), ms in index.items():
        if v != "triton_branch":
            continue
        key = (N, d, R, k, dt, ps)
        out.append({
            "N": N, "d": d, "R": R, "k": k, "dtype": dt, "pass": ps,
            "branch_speedup_vs_torch": index[(*key, "torch_branch")] / ms,
            "layer_vs_base_gemm": index[(*key, "triton_layer")] / index[(*key, "base_gemm")],
            "torch_layer_vs_base_gemm": index[(*key, "torch_layer")] / index[(*key, "base_gemm")],
        })
    return out


def plot(ratios: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['N']}/{r['d']}/R{r['R']}/k{r['k']}/{r['dtype']}/{r['pass']}" for r in ratios]
    axes[0].barh(labels, [r["branch_speedup_vs_torch"] for r in ratios])
    axes[0].set_xlabel("branch speedup, Triton vs torch reference")
    axes[1].barh(labels, [r["layer_vs_base_gemm"] for r in ratios])
    axes[1].axvline(1.2, color="red", linestyle="--")
    axes[1].set_xlabel("whole layer time / base GEMM time")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=5)
    fig.suptitle(device)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
