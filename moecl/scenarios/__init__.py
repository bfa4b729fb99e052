"""Task streams: registered datasets split into Avalanche experiences (docs/scenarios.md)."""
from __future__ import annotations

from omegaconf import DictConfig

from moecl.scenarios import builtin  # noqa: F401  (fills the registry)
from moecl.scenarios.registry import SCENARIOS, ClassSplitData, register
from moecl.scenarios.stream import TaskStream, split_by_class, stream_from_benchmark


def build_stream(cfg: DictConfig) -> TaskStream:
    """Build the scenario named by ``cfg.name`` and split it into experiences."""
    return split_by_class(SCENARIOS.get(cfg.name)(cfg), cfg)


__all__ = ["SCENARIOS", "ClassSplitData", "TaskStream", "build_stream", "register", "split_by_class", "stream_from_benchmark"]
