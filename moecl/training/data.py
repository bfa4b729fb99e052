"""Plain DataLoaders over experience datasets, and the frozen-feature cache."""
from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from moecl.backbones import Backbone


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A plain DataLoader; shuffling draws from its own generator so data order depends only on ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
        num_workers=num_workers, persistent_workers=num_workers > 0,
    )


@torch.no_grad()
def cache_features(backbone: Backbone, dataset: Dataset, batch_size: int, device: torch.device) -> TensorDataset:
    """One backbone forward per sample: (features, label, task) tensors for frozen-feature methods."""
    backbone.eval().to(device)
    feats, labels, tasks = [], [], []
    for batch in make_loader(dataset, batch_size, shuffle=False):
        feats.append(backbone(batch[0].to(device)).float().cpu())
        labels.append(batch[1])
        tasks.append(batch[2] if len(batch) > 2 else torch.zeros_like(batch[1]))
    return TensorDataset(torch.cat(feats), torch.cat(labels), torch.cat(tasks))


def joint(datasets: list[Dataset]) -> Dataset:
    """All experiences' data as one dataset (multi-task mode)."""
    return ConcatDataset(datasets)
