"""Every number derived from the accuracy matrix (design.md, "Definitions").

R[t][j] (0-based here) is the accuracy in percent on test experience j after training
through experience t. All functions take R as a square T x T array-like.

Written here because Avalanche's functional API has only a forgetting matrix (measured
from R[j][j], not from the best accuracy) and no BWT/FWT/Transfer; the tests check
where the two must agree.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"accuracy matrix must be square T x T, got shape {m.shape}")
    return m


def average_accuracy(R: Sequence[Sequence[float]]) -> list[float]:
    """A_t = mean_{j<=t} R[t][j], for t = 1..T."""
    m = _matrix(R)
    return [float(m[t, : t + 1].mean()) for t in range(m.shape[0])]


def average_incremental_accuracy(R: Sequence[Sequence[float]]) -> float:
    """mean_t A_t."""
    return float(np.mean(average_accuracy(R)))


def forgetting_per_experience(R: Sequence[Sequence[float]]) -> list[float]:
    """f_j = max_{l in [j, T-1]} R[l][j] - R[T][j] for j < T (1-based, as in design.md)."""
    m = _matrix(R)
    T = m.shape[0]
    return [float(m[j : T - 1, j].max() - m[T - 1, j]) for j in range(T - 1)]


def forgetting(R: Sequence[Sequence[float]]) -> float | None:
    """Mean forgetting over j < T; None for a single experience."""
    f = forgetting_per_experience(R)
    return float(np.mean(f)) if f else None


def bwt(R: Sequence[Sequence[float]]) -> float | None:
    """BWT = mean_{j<T} (R[T][j] - R[j][j]); None for a single experience."""
    m = _matrix(R)
    T = m.shape[0]
    return float(np.mean([m[T - 1, j] - m[j, j] for j in range(T - 1)])) if T > 1 else None


def fwt(R: Sequence[Sequence[float]], initial: Sequence[float] | None) -> float | None:
    """FWT = mean_{j>=2} (R[j-1][j] - b_j), b_j = accuracy on j before any training."""
    m = _matrix(R)
    T = m.shape[0]
    if initial is None or T < 2:
        return None
    return float(np.mean([m[j - 1, j] - initial[j] for j in range(1, T)]))


def multi_domain(R: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """MTIL-style Transfer / Average / Last.

    Transfer = mean_{j>=2} mean_{t<j} R[t][j]; Average = mean of all R[t][j];
    Last = mean_j R[T][j].
    """
    m = _matrix(R)
    T = m.shape[0]
    transfer = float(np.mean([m[:j, j].mean() for j in range(1, T)])) if T > 1 else None
    return {"transfer": transfer, "average": float(m.mean()), "last": float(m[T - 1].mean())}


def summarize(R: Sequence[Sequence[float]], initial: Sequence[float] | None = None) -> dict[str, object]:
    """The metrics.json accuracy block for a continual run."""
    avg = average_accuracy(R)
    return {
        "accuracy_matrix": _matrix(R).tolist(),
        "average_accuracy": avg,
        "last_accuracy": avg[-1],
        "average_incremental_accuracy": float(np.mean(avg)),
        "forgetting": forgetting(R),
        "bwt": bwt(R),
        "fwt": fwt(R, initial),
        "initial_accuracy": None if initial is None else [float(v) for v in initial],
    }
