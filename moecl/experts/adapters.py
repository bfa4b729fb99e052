"""SEMA: modular adapters with representation descriptors, mixed by an expandable router.

design.md "Methods / SEMA" (reference: SEMA-CL). An ``AdapterPool`` wraps a
transformer block's MLP: ``mlp(x) + sum_i w_i(x) adapter_i(x)``, the adapters taking
the MLP's own input. Each adapter has a representation descriptor (RD): a linear
autoencoder on the token mean of that input whose loss statistics tell whether new
data looks like what the adapter was trained on.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from moecl.experts.wrapper import ExpertWrapper


class FunctionalAdapter(nn.Module):
    """up(ReLU(down(x))): down kaiming-initialised, up and biases zero (starts as a no-op)."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x)))


class RepresentationDescriptor(nn.Module):
    """Linear autoencoder d -> rd_dim -> d with a rolling buffer of its per-sample losses."""

    def __init__(self, dim: int, rd_dim: int, buffer_size: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, rd_dim)
        self.decoder = nn.Linear(rd_dim, dim)
        self.register_buffer("losses", torch.zeros(buffer_size))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def loss(self, feature: torch.Tensor) -> torch.Tensor:
        """Per-sample reconstruction MSE of (N, d) features."""
        return (self.decoder(self.encoder(feature)) - feature).pow(2).mean(-1)

    @torch.no_grad()
    def record(self, losses: torch.Tensor) -> None:
        """Keep the last ``buffer_size`` losses (a ring buffer)."""
        size = self.losses.numel()
        flat = losses.detach().flatten().to(self.losses.dtype)
        values = flat[-size:]
        start = int(self.filled) + flat.numel() - values.numel()
        self.losses[(start + torch.arange(values.numel(), device=values.device)) % size] = values
        self.filled += flat.numel()

    def zscore(self, losses: torch.Tensor) -> torch.Tensor:
        """|(loss - mean) / std| against the recorded losses."""
        n = min(int(self.filled), self.losses.numel())
        if n < 2:
            raise RuntimeError("representation descriptor has no loss statistics yet")
        kept = self.losses[:n]
        return ((losses - kept.mean()) / kept.std().clamp_min(1e-8)).abs()


class AdapterPool(ExpertWrapper):
    """A block's MLP plus its adapters, descriptors and router.

    ``mode`` (set by the method) adds work to the forward pass:
    ``"detect"`` appends every descriptor's per-sample z-score to ``z_scores``;
    ``"train_rd"`` appends the newest descriptor's loss to ``rd_losses``;
    ``"record"`` feeds the newest descriptor's losses into its statistics buffer.
    """

    MODES = (None, "detect", "train_rd", "record")

    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int, rd_dim: int, buffer_size: int) -> None:
        super().__init__(mlp)
        self.dim, self.bottleneck, self.rd_dim, self.buffer_size = dim, bottleneck, rd_dim, buffer_size
        self.adapters = nn.ModuleList()
        self.descriptors = nn.ModuleList()
        self.router = nn.ModuleList()
        self.mode: str | None = None
        self.z_scores: list[torch.Tensor] = []
        self.rd_losses: list[torch.Tensor] = []

    def set_mode(self, mode: str | None) -> None:
        assert mode in self.MODES, mode
        self.mode = mode
        self.z_scores, self.rd_losses = [], []

    def __len__(self) -> int:
        return len(self.adapters)

    def add_adapter(self) -> None:
        """Append an adapter, its descriptor and its router column; freeze everything older."""
        for p in self.parameters():
            p.requires_grad_(False)
        w = next(self.base_layer.parameters())
        self.adapters.append(FunctionalAdapter(self.dim, self.bottleneck).to(w.device, w.dtype))
        self.descriptors.append(RepresentationDescriptor(self.dim, self.rd_dim, self.buffer_size).to(w.device, w.dtype))
        router = nn.Linear(self.dim, 1).to(w.device, w.dtype)
        nn.init.zeros_(router.weight)
        nn.init.zeros_(router.bias)
        self.router.append(router)

    def activated_params(self) -> int:
        """Expert parameters that multiply one token: the router's softmax mixes every adapter.

        Descriptors run only while training decides on expansion, so they do not count.
        """
        return sum(p.numel() for module in (self.adapters, self.router) for p in module.parameters())

    def set_trainable(self, adapter: bool, descriptor: bool) -> None:
        """Train the newest adapter + router column, or the newest descriptor (or neither)."""
        for p in self.parameters():
            p.requires_grad_(False)
        if len(self):
            self.adapters[-1].requires_grad_(adapter)
            self.router[-1].requires_grad_(adapter)
            self.descriptors[-1].requires_grad_(descriptor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not len(self):
            return out
        feature = x.mean(dim=-2) if x.dim() == 3 else x  # token mean (batch-first tokens)
        if self.mode == "detect":
            with torch.no_grad():
                self.z_scores.append(torch.stack([rd.zscore(rd.loss(feature)) for rd in self.descriptors], -1))
        elif self.mode == "train_rd":
            self.rd_losses.append(self.descriptors[-1].loss(feature.detach()).mean())
        elif self.mode == "record":
            with torch.no_grad():
                self.descriptors[-1].record(self.descriptors[-1].loss(feature))
        weights = torch.softmax(torch.cat([r(feature) for r in self.router], -1), -1)  # (N, n_adapters)
        mix = torch.stack([a(x) for a in self.adapters], -1)  # (..., d, n_adapters)
        if x.dim() == 3:
            weights = weights[:, None, None, :]
        else:
            weights = weights[:, None, :]
        return out + (mix * weights).sum(-1)
