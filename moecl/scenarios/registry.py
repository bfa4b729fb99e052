"""The scenario registry: ``scenario.name`` -> builder(cfg) -> ClassSplitData."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig
from torch.utils.data import Dataset

from moecl.registry import Registry


@dataclass
class ClassSplitData:
    """A labelled train/test pair that a scenario splits into experiences by class."""

    train: Dataset
    test: Dataset
    num_classes: int
    class_names: list[str]


SCENARIOS: Registry[Callable[[DictConfig], ClassSplitData]] = Registry("scenario")
register = SCENARIOS.register
