"""Errors a user can cause, each with its own exit code (docs/errors.md).

The CLI prints ``error: <message>`` on one line and exits with ``exit_code``;
``debug=true`` shows the full traceback instead.
"""
from __future__ import annotations

from collections.abc import Iterable


class MoeclError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 1


class ConfigError(MoeclError):
    """A config value or name is invalid."""

    exit_code = 2


class DataNotFoundError(MoeclError):
    """A data root or file is missing."""

    exit_code = 3


class CheckpointError(MoeclError):
    """A checkpoint is missing, corrupt, foreign or does not fit the model."""

    exit_code = 4


class TrainingDivergedError(MoeclError):
    """The loss became NaN or infinite."""

    exit_code = 5


class OutOfMemoryError(MoeclError):
    """The accelerator ran out of memory."""

    exit_code = 6


def _fmt(values: Iterable[object]) -> str:
    return ", ".join(str(v) for v in values)


def check_choice(name: str, value: object, allowed: Iterable[object]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {_fmt(allowed)}")


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optional)."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{name}={value!r} must be a number")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else (f"{low} <= " if low_inclusive else f"{low} < ")
        hi = "" if high is None else f" <= {high}"
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {lo}{name.split('.')[-1]}{hi}")


def describe(err: BaseException, limit: int = 160) -> str:
    """A library exception as a short clause for a one-line message."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        # torch's advice (weights_only=False) would execute arbitrary code: not ours to give.
        return "not a torch weights file, or it holds objects other than tensors; moecl reads weights with weights_only=True"
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
