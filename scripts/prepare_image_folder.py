"""Split a flat class-per-folder image tree into the train/ and test/ trees moecl reads.

    python scripts/prepare_image_folder.py SRC DST [--test-fraction 0.2] [--seed 0] [--copy]

SRC/<class>/<image> becomes DST/train/<class>/<image> and DST/test/<class>/<image>
(symbolic links unless --copy), a fixed fraction of each class in test, chosen with
the given seed. Works for ImageNet-R and the MTIL / X-TAIL domains once downloaded
(moecl itself never downloads them).
"""
from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def split_tree(src: Path, dst: Path, test_fraction: float, seed: int, copy: bool) -> dict[str, int]:
    """Create dst/train and dst/test; returns the number of files written per split."""
    if not 0 < test_fraction < 1:
        raise SystemExit(f"error: --test-fraction={test_fraction} must be between 0 and 1")
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"error: {src} has no class folders")
    counts = {"train": 0, "test": 0}
    rng = random.Random(seed)
    for cls in classes:
        files = sorted(p for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rng.shuffle(files)
        n_test = max(1, round(len(files) * test_fraction)) if len(files) > 1 else 0
        for split, chosen in (("test", files[:n_test]), ("train", files[n_test:])):
            target = dst / split / cls.name
            target.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                out = target / f.name
                if out.exists() or out.is_symlink():
                    continue
                shutil.copy2(f, out) if copy else out.symlink_to(f.resolve())
                counts[split] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy", action="store_true", help="copy files instead of linking them")
    args = parser.parse_args()
    counts = split_tree(args.src, args.dst, args.test_fraction, args.seed, args.copy)
    print(f"wrote {counts['train']} train and {counts['test']} test images under {args.dst}")


if __name__ == "__main__":
    main()
