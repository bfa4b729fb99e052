"""The frozen backbone every method builds on."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from moecl.experts.wrapper import ExpertWrapper


class ImagePreprocess(nn.Module):
    """Batch-level input adapter: any scenario's images -> the backbone's input.

    Scenarios yield float images in [0, 1] with 1 or 3 channels and their own size;
    resizing and normalising the whole batch here (instead of per-sample transforms)
    keeps data loading cheap and lets the same stream feed any backbone.
    """

    def __init__(self, size: int, channels: int = 3, mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.5,)) -> None:
        super().__init__()
        self.size = size
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(images) -> (N, feature_dim)``.

    Attributes:
        name: registry name it was built from.
        model: the pretrained network (frozen; experts are injected into it).
        preprocess: batch transform applied before ``model``.
        feature_dim: size of the pooled feature vector.
        block_names: names of the transformer blocks (where SEMA adapters go).
        default_targets: name endings of the attention and MLP projections (what
            ``method.targets=default`` wraps).
        mlp_targets: name endings (or a regex) of the MLP projections alone (what
            ``targets=mlp`` wraps: MixLoRA / LoRAMoE experts).
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        preprocess: nn.Module,
        feature_dim: int,
        block_names: list[str] | None = None,
        default_targets: list[str] | None = None,
        mlp_targets: list[str] | str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.preprocess = preprocess
        self.feature_dim = feature_dim
        self.block_names = list(block_names or [])
        self.default_targets = list(default_targets or [])
        self.mlp_targets = mlp_targets if isinstance(mlp_targets, str) else list(mlp_targets or [])
        self.towers = {"image": ""}  # tower -> name prefix of its modules inside `model`
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # Pretrained modules stay in eval mode (dropout, norm statistics) whatever the
        # method's mode; injected expert wrappers follow it.
        super().train(mode)
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, ExpertWrapper):
                module.train(mode)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    def linear_layer_names(self) -> list[str]:
        """Names of every nn.Linear an expert may wrap."""
        return [name for name, module in self.model.named_modules() if isinstance(module, nn.Linear) and name]
