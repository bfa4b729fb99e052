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
