"""Turn labelled data into an Avalanche class-incremental / task-incremental benchmark."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.task_aware import task_incremental_benchmark
from omegaconf import DictConfig

from moecl.errors import ConfigError, check_choice, check_range
from moecl.scenarios.registry import ClassSplitData

SETTINGS = ("class_incremental", "task_incremental")
# also produced by multi-domain streams: "all_classes" (predict over every class of the stream)


@dataclass
class TaskStream:
    """What the runner needs: the Avalanche benchmark plus the facts reports log."""

    benchmark: object
    setting: str
    classes_per_experience: list[list[int]]
    class_order: list[int]
    class_names: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)  # multi-domain streams: the domain of each experience
    held_out: list[tuple] = field(default_factory=list)  # (name, test dataset, classes), never trained on

    @property
    def num_experiences(self) -> int:
        return len(self.classes_per_experience)

    @property
    def num_classes(self) -> int:
        held = [c for _, _, classes in self.held_out for c in classes]
        return max(len(self.class_names), 1 + max(c for exp in self.classes_per_experience for c in exp + held))


def classes_per_split(num_classes: int, num_experiences: int) -> list[int]:
    """Equal splits; the remainder goes to the last experiences (Avalanche drops it)."""
    base, extra = divmod(num_classes, num_experiences)
    return [base + (1 if i >= num_experiences - extra else 0) for i in range(num_experiences)]


def class_order_for(num_classes: int, seed: int | None) -> list[int]:
    """Class order from its own seed; ``None`` keeps the natural order.

    A numpy Generator keeps the training RNG untouched (Avalanche's own ``seed``
    argument reseeds torch's global generator).
    """
    if seed is None:
        return list(range(num_classes))
    return np.random.default_rng(seed).permutation(num_classes).tolist()


def experience_classes(num_classes: int, cfg: DictConfig) -> tuple[list[int], list[list[int]]]:
    """The class order (``class_order`` or from ``class_order_seed``) and the classes of each experience."""
    check_range("scenario.num_experiences", cfg.num_experiences, low=1, high=num_classes, integer=True)
    if cfg.class_order is not None:
        order = [int(c) for c in cfg.class_order]
        if sorted(order) != list(range(num_classes)):
            raise ConfigError(f"scenario.class_order={order} must be a permutation of 0..{num_classes - 1}")
    else:
        order = class_order_for(num_classes, cfg.class_order_seed)
    bounds = np.cumsum([0, *classes_per_split(num_classes, cfg.num_experiences)])
    return order, [order[bounds[i] : bounds[i + 1]] for i in range(cfg.num_experiences)]


def split_by_class(data: ClassSplitData, cfg: DictConfig) -> TaskStream:
    """Split ``data`` into ``cfg.num_experiences`` experiences of disjoint classes."""
    check_choice("scenario.setting", cfg.setting, SETTINGS)
    order, per_exp = experience_classes(data.num_classes, cfg)
    benchmark = class_incremental_benchmark(
        {"train": data.train, "test": data.test}, class_order=order, num_classes_per_exp=[len(c) for c in per_exp]
    )
    if cfg.setting == "task_incremental":
        benchmark = task_incremental_benchmark(benchmark, reset_task_labels=True)
    return TaskStream(benchmark, cfg.setting, per_exp, order, list(data.class_names))


def stream_from_benchmark(benchmark: object, setting: str = "class_incremental") -> TaskStream:
    """Wrap a benchmark a user built (train_stream / test_stream of labelled experiences)."""
    check_choice("setting", setting, SETTINGS)
    for attr in ("train_stream", "test_stream"):
        if not hasattr(benchmark, attr):
            raise ConfigError(f"benchmark {type(benchmark).__name__} has no {attr}; build it with Avalanche's benchmark API")
    per_exp = []
    for exp in benchmark.train_stream:
        classes = getattr(exp, "classes_in_this_experience", None)
        if classes is None:
            classes = set(int(t) for t in exp.dataset.targets)
        per_exp.append(sorted(int(c) for c in classes))
    if len(per_exp) != len(benchmark.test_stream):
        raise ConfigError(
            f"benchmark has {len(per_exp)} train experiences but {len(benchmark.test_stream)} test experiences; they must match"
        )
    order = [c for exp in per_exp for c in exp]
    return TaskStream(benchmark, setting, per_exp, order)
