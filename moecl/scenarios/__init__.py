"""Task streams: registered datasets split into Avalanche experiences (docs/scenarios.md)."""
from __future__ import annotations

from omegaconf import DictConfig

from moecl.scenarios import builtin, multi_domain  # noqa: F401  (fill the registry)
from moecl.scenarios.registry import SCENARIOS, ClassSplitData, register
from moecl.scenarios.stream import TaskStream, split_by_class, stream_from_benchmark


def build_stream(cfg: DictConfig) -> TaskStream:
    """Build the scenario named by ``cfg.name`` (split into experiences by class unless it is already a stream)."""
    built = SCENARIOS.get(cfg.name)(cfg)
    return built if isinstance(built, TaskStream) else split_by_class(built, cfg)


__all__ = ["SCENARIOS", "ClassSplitData", "TaskStream", "build_stream", "register", "split_by_class", "stream_from_benchmark"]
