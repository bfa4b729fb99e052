"""Pretrain the tiny ViT on synthetic glyphs, so the CPU default has a real frozen backbone.

No pretrained vision weights can be downloaded offline, and a randomly initialised ViT
is a poor frozen feature extractor (its pooled features are nearly a linear function
of the mean patch). This script renders letters and symbols (no digits, so Split-Digits
stays unseen) with Pillow's bundled font under random size, stroke, rotation, shift and
blur, trains tiny_vit + a linear head to classify them, and writes the backbone weights
(without the head) as safetensors. The committed file
moecl/backbones/weights/tiny_vit_glyphs.safetensors was made by:

    python scripts/pretrain_tiny_vit.py --out moecl/backbones/weights/tiny_vit_glyphs.safetensors
"""
from __future__ import annotations

import argparse
import string
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from safetensors.torch import save_file
from torch.nn import functional as F

from moecl.backbones import build_backbone
from moecl.run import compose_config

GLYPHS = string.ascii_letters + "#$%&@*+=?<>/\\[]{}()!~^"


def render(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random glyph images (1 x 16 x 16 in [0, 1]) and their labels."""
    images, labels = np.zeros((n, 16, 16), dtype=np.float32), rng.integers(0, len(GLYPHS), n)
    fonts = {s: ImageFont.load_default(size=s) for s in range(14, 27)}
    for i, label in enumerate(labels):
        img = Image.new("L", (32, 32))
        draw = ImageDraw.Draw(img)
        draw.text(
            (16 + rng.integers(-3, 4), 16 + rng.integers(-3, 4)), GLYPHS[label],
            font=fonts[int(rng.integers(14, 27))], fill=255, anchor="mm", stroke_width=int(rng.integers(0, 3)), stroke_fill=255,
        )
        img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
        if rng.random() < 0.5:  # 8x8-like resolution, as in sklearn's digits
            img = img.resize((8, 8), Image.BILINEAR)
        img = img.resize((16, 16), Image.BILINEAR).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
        images[i] = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x, y = render(rng, args.samples)
    x_val, y_val = render(rng, 5000)
    backbone = build_backbone(compose_config(["backbone.pretrained=null"]).backbone)
    backbone.model.requires_grad_(True).train()
    head = torch.nn.Linear(backbone.feature_dim, len(GLYPHS))
    params = [*backbone.model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    steps = args.epochs * (len(x) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    began = time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(len(x) // 256):
            idx = order[i * 256 : (i + 1) * 256]
            loss = F.cross_entropy(head(backbone.model(backbone.preprocess(x[idx]))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            backbone.model.eval()
            acc = (head(backbone.model(backbone.preprocess(x_val))).argmax(-1) == y_val).float().mean()
            backbone.model.train()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out glyph accuracy {100 * acc:.1f}% ({time.time() - began:.0f}s)")
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
