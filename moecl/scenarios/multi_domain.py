"""Multi-domain streams (MTIL / X-TAIL): an ordered list of datasets, one experience each.

Every domain keeps its own classes, offset into one global label space. Protocol
``mtil``: the domain id is known at test time and prediction is within its classes
(setting ``task_incremental``). Protocol ``xtail``: no domain id, prediction over the
union of every domain's classes (setting ``all_classes``). ``held_out`` domains are
never trained on; the runner measures them after each experience (out-of-domain
forgetting against the untrained model).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_classification_dataset
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from moecl.errors import ConfigError, DataNotFoundError, check_choice
from moecl.scenarios.builtin import DOMAINS
from moecl.scenarios.registry import SCENARIOS, ClassSplitData
from moecl.scenarios.stream import TaskStream

log = logging.getLogger("moecl")
PROTOCOLS = {"mtil": "task_incremental", "xtail": "all_classes"}
DOMAIN_DEFAULTS = {
    "transform": None, "optional": False, "class_name_format": "{}", "class_names": None,
    "max_train_per_class": None, "max_test_per_class": None,
    "root": None, "download": False, "test_fraction": 0.25, "split_seed": 0, "image_size": 224,
}


class Relabelled(Dataset):
    """(x, y + offset), optionally through an image transform; exposes ``targets`` for Avalanche."""

    def __init__(self, base: Dataset, offset: int, transform=None) -> None:
        self.base, self.offset, self.transform = base, offset, transform
        targets = getattr(base, "targets", None)
        if targets is None:
            targets = base.tensors[1]  # TensorDataset
        self.targets = [int(t) + offset for t in targets]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i][:2]
        if self.transform is not None:
            x = torch.as_tensor(np.ascontiguousarray(self.transform(x.numpy())))
        return x, int(y) + self.offset


def _limit(ds: Dataset, per_class: int | None, seed: int = 0) -> Dataset:
    if not per_class:
        return ds
    targets = np.asarray(getattr(ds, "targets", None) if getattr(ds, "targets", None) is not None else ds.tensors[1])
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(targets == c))[:per_class] for c in np.unique(targets)])
    sub = Subset(ds, np.sort(keep).tolist())
    sub.targets = targets[np.sort(keep)].tolist()
    return sub


def load_domain(entry: DictConfig) -> ClassSplitData | None:
    """A domain's data from any registered class-split scenario; None if optional and missing."""
    cfg = OmegaConf.merge(DOMAIN_DEFAULTS, entry)
    if cfg.source == "multi_domain" or cfg.source not in SCENARIOS:
        raise ConfigError(f"scenario.domains: source={cfg.source!r} is not allowed; choose one of: {', '.join(n for n in SCENARIOS.names() if n != 'multi_domain')}")
    if cfg.transform is not None and cfg.transform not in DOMAINS:
        raise ConfigError(f"scenario.domains: transform={cfg.transform!r} is not allowed; choose one of: {', '.join(DOMAINS)}")
    try:
        data = SCENARIOS.get(cfg.source)(cfg)
    except DataNotFoundError as err:
        if cfg.optional:
            log.warning("domain %s skipped: %s", cfg.name, err)
            return None
        raise DataNotFoundError(f"domain {cfg.name!r}: {err}") from err
    names = list(cfg.class_names) if cfg.class_names else [cfg.class_name_format.format(n.replace("_", " ")) for n in data.class_names]
    return ClassSplitData(_limit(data.train, cfg.max_train_per_class), _limit(data.test, cfg.max_test_per_class), data.num_classes, names)


def build_multi_domain(cfg: DictConfig) -> TaskStream:
    """The stream of ``cfg.domains`` (one experience each) plus its ``cfg.held_out`` domains."""
    check_choice("scenario.protocol", cfg.protocol, PROTOCOLS)
    entries = [e for e in cfg.domains]
    if not entries:
        raise ConfigError("scenario.domains is empty; list at least one domain")
    offset, train, test, per_exp, names, domain_names = 0, [], [], [], [], []
    loaded = []
    for entry, is_held_out in [*((e, False) for e in entries), *((e, True) for e in (cfg.get("held_out") or []))]:
        data = load_domain(entry)
        if data is None:
            continue
        transform = DOMAINS[entry.transform] if entry.get("transform") else None
        loaded.append((entry, is_held_out, data, offset, transform))
        names += data.class_names
        offset += data.num_classes
    held_out = []
    for entry, is_held_out, data, start, transform in loaded:
        classes = list(range(start, start + data.num_classes))
        sets = [Relabelled(d, start, transform) for d in (data.train, data.test)]
        if is_held_out:
            held_out.append((entry.name, sets[1], classes))
            continue
        train.append(_make_taskaware_classification_dataset(sets[0], task_labels=len(per_exp)))
        test.append(_make_taskaware_classification_dataset(sets[1], task_labels=len(per_exp)))
        per_exp.append(classes)
        domain_names.append(entry.name)
    if not per_exp:
        raise DataNotFoundError("scenario.domains: every domain was skipped (optional and missing)")
    benchmark = with_classes_timeline(benchmark_from_datasets(train=train, test=test))
    order = [c for exp in per_exp for c in exp]
    return TaskStream(benchmark, PROTOCOLS[cfg.protocol], per_exp, order, names, domains=domain_names, held_out=held_out)


SCENARIOS.register("multi_domain")(build_multi_domain)
