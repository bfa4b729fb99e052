"""Run-directory artefacts: accuracy_matrix.csv, heatmap.png, rank_usage.png, report.md."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from moecl.reporting.terminal import SUMMARY_KEYS, _fmt  # noqa: E402
from moecl.training.atomic import write_bytes, write_text  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def matrix_csv(metrics: dict) -> str:
    rows = metrics["accuracy_matrix"]
    header = "after," + ",".join(f"exp_{j + 1}" for j in range(len(rows[0])))
    return "\n".join([header, *(f"{t + 1}," + ",".join(f"{v:.4f}" for v in row) for t, row in enumerate(rows))]) + "\n"


def heatmap_png(metrics: dict) -> bytes:
    R = np.asarray(metrics["accuracy_matrix"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * R.shape[1], 0.8 + 0.6 * R.shape[0]))
    im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
    for (t, j), v in np.ndenumerate(R):
        ax.text(j, t, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=8)
    ax.set_xticks(range(R.shape[1]), [str(j + 1) for j in range(R.shape[1])])
    ax.set_yticks(range(R.shape[0]), [str(t + 1) for t in range(R.shape[0])])
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training experience t")
    ax.set_title(f"{metrics['method']} on {metrics['scenario']}")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _png(fig)


def rank_usage_png(usage: list[dict]) -> bytes:
    """Atoms x tasks: fraction of the task's test tokens whose top-k holds each atom (mean over layers)."""
    atoms = max(len(u["utilisation"]) for u in usage)
    grid = np.full((atoms, len(usage)), np.nan)
    for t, u in enumerate(usage):
        grid[: len(u["utilisation"]), t] = u["utilisation"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(usage), 1.5 + 0.08 * atoms))
    im = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(usage)), [str(u["experience"]) for u in usage])
    ax.set_xlabel("task (its test data, after training it)")
    ax.set_ylabel("atom index (task blocks in order)")
    ax.set_title("rank-1 atom utilisation (in top-k)")
    fig.colorbar(im, ax=ax, label="fraction of tokens")
    return _png(fig)


def expansion_png(per_experience: list[dict]) -> bytes:
    """Adapters per layer after each task (SEMA)."""
    layers = list(per_experience[0]["adapters_per_layer"])
    tasks = range(1, len(per_experience) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for layer in layers:
        ax.plot(tasks, [e["adapters_per_layer"][layer] for e in per_experience], marker="o", label=layer)
    ax.plot(tasks, list(tasks), color="grey", linestyle=":", label="one per task")
    ax.set_xlabel("after task")
    ax.set_ylabel("adapters")
    ax.set_xticks(list(tasks))
    ax.legend(fontsize=7)
    ax.set_title("SEMA expansion")
    return _png(fig)


def report_md(metrics: dict, config_yaml: str) -> str:
    rows = metrics["accuracy_matrix"]
    lines = [
        f"# moecl run: {metrics['method']} on {metrics['scenario']}",
        "",
        f"- backbone: `{metrics['backbone']}`; setting: {metrics['setting']}; mode: {metrics['mode']}",
        f"- seed: {metrics['seed']}; class order seed: {metrics['class_order_seed']}",
        f"- class order: {metrics['class_order']}",
        f"- classes per experience: {metrics['classes_per_experience']}",
        f"- complete: {metrics['complete']}; wall time: {metrics['wall_time_s']:.1f} s",
        "",
        "## Accuracy matrix R[t][j] (%)",
        "",
        "| after \\ test | " + " | ".join(str(j + 1) for j in range(len(rows[0]))) + " |",
        "|---" * (len(rows[0]) + 1) + "|",
        *(f"| {t + 1} | " + " | ".join(f"{v:.1f}" for v in row) + " |" for t, row in enumerate(rows)),
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {label} | {_fmt(metrics.get(key))} |" for key, label in SUMMARY_KEYS if metrics.get(key) is not None),
        f"| trainable parameters per experience | {metrics['params']['trainable_per_experience']} |",
        f"| backbone parameters (frozen) | {metrics['params']['backbone']} |",
        "",
        "![accuracy heatmap](heatmap.png)",
        "",
        "## Config",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_run_files(run_dir: str | Path, metrics: dict, config_yaml: str) -> None:
    """Write every artefact of a finished (or partial) run atomically."""
    run_dir = Path(run_dir)
    write_text(run_dir / "accuracy_matrix.csv", matrix_csv(metrics))
    write_bytes(run_dir / "heatmap.png", heatmap_png(metrics))
    usage = [exp["usage"] for exp in metrics["experts"]["per_experience"] if exp.get("usage")]
    if usage:
        write_bytes(run_dir / "rank_usage.png", rank_usage_png(usage))
    per_experience = metrics["experts"]["per_experience"]
    if per_experience and "adapters_per_layer" in per_experience[0]:
        write_bytes(run_dir / "expansion.png", expansion_png(per_experience))
    write_text(run_dir / "report.md", report_md(metrics, config_yaml))
