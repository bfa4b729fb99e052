"""CLIP zero-shot head: class embeddings from class names and prompt templates."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TextHead(nn.Module):
    """Logits = logit_scale * cos(image feature, class text embedding).

    A class's embedding is the normalised mean over templates of the normalised text
    embeddings of ``template.format(class name)``. When the text tower has trainable
    experts the embeddings are recomputed (with gradients) at every training step;
    otherwise they are cached, and the cache is dropped whenever the mode changes
    (e.g. after training), so evaluation always sees the current text tower.
    """

    def __init__(self, backbone: nn.Module, class_names: list[str], templates: list[str]) -> None:
        super().__init__()
        self._backbone = [backbone]  # a list: not a submodule, its weights are the backbone's
        self.templates = list(templates)
        self.num_classes = len(class_names)
        prompts = [t.format(name) for name in class_names for t in self.templates]
        self.register_buffer("tokens", backbone.tokenize(prompts), persistent=False)
        self._cache: torch.Tensor | None = None

    def train(self, mode: bool = True) -> "TextHead":
        self._cache = None
        return super().train(mode)

    def class_embeddings(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) normalised class embeddings; rows outside ``classes`` (a bool mask) are zero."""
        backbone = self._backbone[0]
        T = len(self.templates)
        if classes is None:
            classes = torch.ones(self.num_classes, dtype=torch.bool, device=self.tokens.device)
        rows = classes.nonzero().flatten()
        tokens = self.tokens.view(self.num_classes, T, -1)[rows].flatten(0, 1)
        emb = F.normalize(backbone.encode_text(tokens), dim=-1).view(len(rows), T, -1).mean(1)
        out = torch.zeros(self.num_classes, emb.shape[-1], device=emb.device, dtype=emb.dtype)
        return out.index_copy(0, rows, F.normalize(emb, dim=-1))

    def forward(self, features: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        text_trains = any(p.requires_grad for p in self._backbone[0].model.transformer.parameters())
        if self.training and text_trains:
            emb = self.class_embeddings(classes)
        else:
            if self._cache is None:
                with torch.no_grad():
                    self._cache = self.class_embeddings()
            emb = self._cache
        return self._backbone[0].logit_scale * F.normalize(features, dim=-1) @ emb.t().to(features.dtype)
