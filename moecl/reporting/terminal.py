"""The accuracy matrix and summary as rich tables."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

SUMMARY_KEYS = (
    ("last_accuracy", "last accuracy (%)"),
    ("average_incremental_accuracy", "avg incremental accuracy (%)"),
    ("forgetting", "forgetting (%)"),
    ("bwt", "BWT (%)"),
    ("fwt", "FWT (%)"),
    ("transfer", "Transfer (%)"),
    ("average", "Average (%)"),
    ("last", "Last (%)"),
)


def _fmt(value: object) -> str:
    return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def matrix_table(metrics: dict) -> Table:
    rows = metrics["accuracy_matrix"]
    table = Table(title=f"Accuracy matrix R[t][j] (%): {metrics['method']} on {metrics['scenario']} ({metrics['setting']})")
    table.add_column("after", justify="right")
    for j in range(len(rows[0]) if rows else 0):
        table.add_column(f"exp {j + 1}", justify="right")
    for t, row in enumerate(rows):
        label = "joint" if metrics.get("mode") == "multitask" else f"exp {t + 1}"
        table.add_row(label, *(f"{v:.1f}" for v in row))
    return table


def summary_table(metrics: dict) -> Table:
    table = Table(title="Summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in SUMMARY_KEYS:
        if key in metrics and metrics[key] is not None:
            table.add_row(label, _fmt(metrics[key]))
    for name, ood in (metrics.get("out_of_domain") or {}).items():
        table.add_row(f"out-of-domain {name}: zero-shot -> last (%)", f"{ood['zero_shot']:.2f} -> {_fmt(ood['after_experience'][-1] if ood['after_experience'] else None)}")
    params = metrics["params"]
    table.add_row("trainable params (last experience)", _fmt(params["trainable_per_experience"][-1] if params["trainable_per_experience"] else None))
    table.add_row("backbone params (frozen)", _fmt(params["backbone"]))
    table.add_row("wall time (s)", _fmt(metrics["wall_time_s"]))
    return table


def print_report(metrics: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(matrix_table(metrics))
    console.print(summary_table(metrics))
