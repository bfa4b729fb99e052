"""Accuracy-matrix metrics (docs/metrics.md)."""
from moecl.metrics.continual import (
    average_accuracy,
    average_incremental_accuracy,
    bwt,
    forgetting,
    forgetting_per_experience,
    fwt,
    multi_domain,
    summarize,
)

__all__ = [
    "average_accuracy",
    "average_incremental_accuracy",
    "bwt",
    "forgetting",
    "forgetting_per_experience",
    "fwt",
    "multi_domain",
    "summarize",
]
