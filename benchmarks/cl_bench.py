"""Methods side by side on the same stream, backbone and epochs.

    python benchmarks/cl_bench.py --scenario split_digits --methods mora seq_lora linear_probe prototype --seeds 0 1 2

Each (method, seed) is one ``moecl.run.run`` in its own spawned process and run directory
under --out-dir (re-running resumes or reuses finished runs), so its peak memory is its own:
peak resident memory on CPU, peak allocated GPU memory on CUDA. Writes
benchmarks/results/cl_<scenario>.json with every run's metrics and the mean/std table, a
PNG of bars and accuracy curves, and prints the table as markdown.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from concurrent.futures import ProcessPoolExecutor

from moecl.run import compose_config, run
from moecl.training.atomic import write_json

COLUMNS = (
    ("last_accuracy", "last acc"),
    ("average_incremental_accuracy", "avg inc acc"),
    ("forgetting", "forgetting"),
    ("bwt", "BWT"),
)
MULTI_DOMAIN_COLUMNS = (("transfer", "Transfer"), ("average", "Average"), ("last", "Last"))
MULTITASK_COLUMNS = (
    ("last_accuracy", "accuracy"),
    ("multitask.within_task_average", "within-task acc"),
    ("multitask.single_task_average", "single-task acc"),
    ("multitask.gap_to_single_task", "gap to single-task"),
)
METHODS = ["mora", "sema", "moe_adapters", "seq_lora", "linear_probe", "prototype", "naive", "ewc", "lwf", "replay", "cumulative"]
QUICK_EPOCHS, QUICK_PER_CLASS = 3, 200
ROUTING_COLUMNS = (("load_cv", "load CV"), ("activated_params_per_token", "activated params / token"))


def value(run: dict, key: str) -> float | None:
    """A metrics.json value by dotted path; routing keys come from the last experience's expert statistics."""
    if key in dict(ROUTING_COLUMNS):
        stats = run["experts"]["per_experience"][-1] if run["experts"]["per_experience"] else {}
        return stats.get(key, (stats.get("usage") or stats.get("routing") or {}).get(key))
    for part in key.split("."):
        run = run.get(part) if isinstance(run, dict) else None
    return run


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def mean_std(values: list[float | None], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if digits == 0:
        return f"{statistics.mean(values):.0f}"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def one_run(overrides: list[str], run_dir: Path) -> dict:
    """One run (in a fresh process); its peak memory is stored next to metrics.json so a reused run keeps it."""
    memory_file = run_dir / "peak_memory.json"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = run(compose_config(overrides), run_dir=run_dir)
    if torch.cuda.is_available():
        peak = {"peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20, "memory_kind": "gpu allocated"}
    else:  # ru_maxrss is in KiB on Linux
        peak = {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "memory_kind": "cpu resident"}
    if memory_file.exists():  # the run was finished before: keep the memory of the process that trained it
        peak = json.loads(memory_file.read_text())
    else:
        write_json(memory_file, peak)
    return {**metrics, **peak}


def table(scenario: str, rows: dict[str, list[dict]]) -> str:
    every = [r for runs in rows.values() for r in runs]
    first = every[0]
    columns = MULTITASK_COLUMNS if first.get("mode") == "multitask" else COLUMNS
    columns += MULTI_DOMAIN_COLUMNS if first.get("transfer") is not None else ()
    columns += tuple(c for c in ROUTING_COLUMNS if any(value(r, c[0]) is not None for r in every))
    head = "| method | " + " | ".join(label for _, label in columns) + " | trainable params / task | wall time (s) | peak memory (MiB) |"
    lines = [head, "|---" * (len(columns) + 4) + "|"]
    for method, runs in rows.items():
        cells = [mean_std([value(r, key) for r in runs], 0 if key == "activated_params_per_token" else 2 if key == "load_cv" else 1) for key, _ in columns]
        trainable = runs[0]["params"]["trainable_per_experience"]
        tp = str(round(statistics.mean(trainable))) if trainable else "0"
        memory = [r["peak_memory_mib"] for r in runs if r.get("peak_memory_mib") is not None]
        mem = f"{statistics.mean(memory):.0f}" if memory else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {tp} | {mean_std([r['wall_time_s'] for r in runs])} | {mem} |")
    return "\n".join(lines)


def plot(rows: dict[str, list[dict]], path: Path, title: str) -> None:
    """Bars of last accuracy and forgetting and the average-accuracy curve A_t, per method
    (multi-task runs: joint vs single-task accuracy and the within-task accuracy per task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(rows)
    x = range(len(names))
    multitask = next(iter(rows.values()))[0].get("mode") == "multitask"
    bar_keys = (("multitask.within_task_average", "joint (within task)"), ("multitask.single_task_average", "single-task")) if multitask \
        else (("last_accuracy", "last accuracy"), ("forgetting", "forgetting"))
    for offset, (key, label) in zip((-0.2, 0.2), bar_keys):
        values = [[value(r, key) or 0.0 for r in rows[m]] for m in names]
        bars.bar([i + offset for i in x], [statistics.mean(v) for v in values], width=0.4, label=label,
                 yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values], capsize=3)
    bars.set_xticks(list(x), names, rotation=30, ha="right")
    bars.set_ylabel("%")
    bars.legend()
    for m in names:
        curves = [(r["multitask"]["within_task_accuracy"] if multitask else r["average_accuracy"]) for r in rows[m]]
        mean = [statistics.mean(v) for v in zip(*curves)]
        curve.plot(range(1, len(mean) + 1), mean, marker="o", label=m)
    curve.set_xticks(range(1, len(mean) + 1))
    curve.set_xlabel("task" if multitask else "after task")
    curve.set_ylabel("within-task accuracy (%)" if multitask else "average accuracy A_t (%)")
    curve.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="split_digits")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="default: every continual method and peer")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--overrides", nargs="*", default=[], help="extra key=value for every run")
    parser.add_argument("--out-dir", default="outputs/cl_bench")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the results file (e.g. lr2e-3)")
    parser.add_argument("--quick", action="store_true", help=f"one seed, {QUICK_EPOCHS} epochs, at most {QUICK_PER_CLASS} training images per class: minutes")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        quick = [f"trainer.max_epochs={QUICK_EPOCHS}"]
        if "max_train_per_class" in compose_config([f"scenario={args.scenario}"]).scenario:
            quick.append(f"scenario.max_train_per_class={QUICK_PER_CLASS}")
        args.overrides = [*quick, *args.overrides]
        args.tag = args.tag or "quick"

    rows: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            overrides = [f"scenario={args.scenario}", f"method={method}", f"seed={seed}",
                         "trainer.progress_bar=false", "print_report=false", *args.overrides]
            began = time.time()
            run_dir = Path(args.out_dir, args.scenario + args.tag, method, f"seed{seed}")
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                metrics = pool.submit(one_run, overrides, run_dir).result()
            rows.setdefault(method, []).append(metrics)
            print(f"{method} seed {seed}: last {metrics['last_accuracy']:.1f} forgetting {metrics['forgetting'] or 0:.1f} ({time.time() - began:.0f}s)", flush=True)
    md = table(args.scenario, rows)
    out = Path(args.results, f"cl_{args.scenario}{'_' + args.tag if args.tag else ''}.json")
    write_json(out, {
        "scenario": args.scenario, "machine": machine(), "seeds": args.seeds, "overrides": args.overrides,
        "table_markdown": md,
        "runs": {m: [{k: r.get(k) for k in ("seed", "accuracy_matrix", "average_accuracy", "last_accuracy", "average_incremental_accuracy", "forgetting", "bwt",
                              "transfer", "average", "last", "out_of_domain", "multitask", "mode", "params", "wall_time_s", "peak_memory_mib", "memory_kind", "experts")} for r in runs] for m, runs in rows.items()},
    })
    plot(rows, out.with_suffix(".png"), f"{args.scenario} ({machine()})")
    print(md)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
