"""Built-in datasets: sklearn digits, Fashion-MNIST (IDX files), CIFAR-100, image folders."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from moecl.errors import ConfigError, DataNotFoundError, check_range
from moecl.scenarios.registry import ClassSplitData, register
from moecl.scenarios.stream import experience_classes

FMNIST_PACKAGE = "dataset-fashion-mnist"
FMNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def _tensor_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return TensorDataset(x, torch.tensor(labels, dtype=torch.long))  # a copy: IDX arrays are read-only


def _digits_arrays(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    check_range("scenario.test_fraction", cfg.test_fraction, low=0, high=1, low_inclusive=False)
    data = load_digits()
    return train_test_split(data.images / 16.0, data.target, test_size=cfg.test_fraction, stratify=data.target, random_state=cfg.split_seed)


@register("split_digits")
def digits(cfg: DictConfig) -> ClassSplitData:
    """sklearn's bundled 8x8 digits (1797 images, 10 classes); a stratified split."""
    x_tr, x_te, y_tr, y_te = _digits_arrays(cfg)
    return ClassSplitData(_tensor_dataset(x_tr, y_tr), _tensor_dataset(x_te, y_te), 10, [str(i) for i in range(10)])


DOMAINS = {
    "original": lambda x: x,
    "inverted": lambda x: 1.0 - x,
    "rotated": lambda x: np.rot90(x, k=1, axes=(-2, -1)),
    "flipped": lambda x: x[..., ::-1],
}


@register("shifted_digits")
def shifted_digits(cfg: DictConfig) -> ClassSplitData:
    """Digits whose experiences alternate between input domains (``scenario.domains``).

    Experience i holds its classes drawn in domain ``domains[i]`` (train and test), so
    domains repeat along the stream: a self-expanding method should grow on a new
    domain and reuse its adapters when a domain comes back.
    """
    unknown = [d for d in cfg.domains if d not in DOMAINS]
    if unknown:
        raise ConfigError(f"scenario.domains has {unknown[0]!r}; allowed: {', '.join(DOMAINS)}")
    if len(cfg.domains) != cfg.num_experiences:
        raise ConfigError(f"scenario.domains has {len(cfg.domains)} entries; it needs one per experience ({cfg.num_experiences})")
    x_tr, x_te, y_tr, y_te = _digits_arrays(cfg)
    _, per_exp = experience_classes(10, cfg)
    for classes, domain in zip(per_exp, cfg.domains):
        for x, y in ((x_tr, y_tr), (x_te, y_te)):
            rows = np.isin(y, classes)
            x[rows] = DOMAINS[domain](x[rows])
    names = [f"{c} ({cfg.domains[i]})" for c in range(10) for i, cl in enumerate(per_exp) if c in cl]
    return ClassSplitData(_tensor_dataset(x_tr, y_tr), _tensor_dataset(x_te, y_te), 10, names)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    raise DataNotFoundError(
        f"scenario.root={str(root)!r} has no {stem}[.gz]; install the Debian package "
        f"{FMNIST_PACKAGE} (apt-get install {FMNIST_PACKAGE}) or set scenario.root to a folder of Fashion-MNIST IDX files"
    )


@register("split_fmnist")
def fashion_mnist(cfg: DictConfig) -> ClassSplitData:
    """Fashion-MNIST from IDX files under ``scenario.root`` (the Debian package's folder by default)."""
    root = Path(cfg.root or FMNIST_DEFAULT_ROOT).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"scenario.root={str(root)!r} does not exist; install the Debian package {FMNIST_PACKAGE} "
            f"(apt-get install {FMNIST_PACKAGE}) or set scenario.root to a folder of Fashion-MNIST IDX files"
        )
    arrays = {
        stem: read_idx(_find_idx(root, stem))
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    }
    limit = cfg.max_train_per_class
    x_tr, y_tr = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    if limit:
        keep = np.concatenate([np.flatnonzero(y_tr == c)[:limit] for c in range(10)])
        x_tr, y_tr = x_tr[np.sort(keep)], y_tr[np.sort(keep)]
    return ClassSplitData(
        _tensor_dataset(x_tr / 255.0, y_tr),
        _tensor_dataset(arrays["t10k-images-idx3-ubyte"] / 255.0, arrays["t10k-labels-idx1-ubyte"]),
        10,
        FMNIST_CLASSES,
    )


@register("split_cifar100")
def cifar100(cfg: DictConfig) -> ClassSplitData:
    """torchvision CIFAR-100 from ``scenario.root``; downloads only with ``scenario.download=true``."""
    from torchvision.datasets import CIFAR100

    if not cfg.root:
        raise DataNotFoundError("scenario.root is not set; point it at a CIFAR-100 folder (or add scenario.download=true)")
    try:
        sets = [CIFAR100(cfg.root, train=train, download=bool(cfg.download)) for train in (True, False)]
    except RuntimeError as err:
        raise DataNotFoundError(
            f"scenario.root={cfg.root!r} holds no CIFAR-100 ({str(err).splitlines()[0]}); add scenario.download=true when online"
        ) from err
    tr, te = (
        _tensor_dataset(np.asarray(s.data).transpose(0, 3, 1, 2) / 255.0, np.asarray(s.targets)) for s in sets
    )
    return ClassSplitData(tr, te, 100, list(sets[0].classes))


@register("image_folder")
def image_folder(cfg: DictConfig) -> ClassSplitData:
    """Class-per-folder trees (ImageNet-R, ...): ``root/train/<class>/*`` and ``root/test/<class>/*``."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(cfg.root or "").expanduser()
    splits = [root / "train", root / "test"]
    missing = [str(p) for p in splits if not p.is_dir()]
    if not cfg.root or missing:
        raise DataNotFoundError(
            f"scenario.root={cfg.root!r} must hold train/ and test/ class folders (missing: {', '.join(missing) or 'root'}); "
            "scripts/prepare_image_folder.py builds them from a flat class-per-folder tree"
        )
    tf = transforms.Compose([transforms.Resize((cfg.image_size, cfg.image_size)), transforms.ToTensor()])
    train, test = (ImageFolder(str(p), transform=tf) for p in splits)
    if train.classes != test.classes:
        raise DataNotFoundError(f"scenario.root={cfg.root!r}: train/ and test/ hold different class folders")
    train.targets, test.targets = list(train.targets), list(test.targets)
    return ClassSplitData(train, test, len(train.classes), list(train.classes))
