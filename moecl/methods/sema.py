"""SEMA: self-expanding mixture of adapters (design.md "Methods / SEMA")."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from moecl.backbones import Backbone
from moecl.errors import check_range
from moecl.experts.adapters import AdapterPool
from moecl.experts.inject import wrap_block_mlps
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register

log = logging.getLogger("moecl")
FitFn = Callable[..., None]


@register("sema")
class SEMA(ContinualMethod):
    """Adapters parallel to each block's MLP; a layer gains an adapter only where every
    existing descriptor sees the new task's data as shifted (mean z > threshold)."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        rd_dim = min(128, backbone.feature_dim // 4) if cfg.rd_dim == "auto" else cfg.rd_dim
        check_range("method.rd_dim", rd_dim, low=1, high=backbone.feature_dim - 1, integer=True)
        self.pools: dict[str, AdapterPool] = wrap_block_mlps(
            backbone, "SEMA", lambda mlp: AdapterPool(mlp, backbone.feature_dim, cfg.bottleneck, rd_dim, cfg.buffer_size)
        )
        check_range("method.expandable_layers", cfg.expandable_layers, low=0, high=len(backbone.block_names), integer=True)
        self.expandable = list(backbone.block_names)[len(backbone.block_names) - cfg.expandable_layers :]
        self.expanded: list[list[str]] = []  # per task: the layers that gained an adapter
        self.decisions: list[dict] = []  # every detection result of the current task
        self.stage = "adapter"

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        check_range("method.threshold", cfg.threshold, low=0)  # 0: expand every layer every task (an ablation)
        check_range("method.bottleneck", cfg.bottleneck, low=1, integer=True)
        check_range("method.buffer_size", cfg.buffer_size, low=2, integer=True)
        check_range("method.rd_epochs", cfg.rd_epochs, low=1, integer=True)
        check_range("method.rd_lr", cfg.rd_lr, low=0, low_inclusive=False)
        if cfg.rd_dim != "auto":
            check_range("method.rd_dim", cfg.rd_dim, low=1, integer=True)

    # -- structure -------------------------------------------------------------
    def before_experience(self, experience: int, classes: list[int]) -> None:
        super().before_experience(experience, classes)
        self.decisions = []
        if experience < len(self.expanded):  # resuming: replay the recorded growth
            for name in self.expanded[experience]:
                self.pools[name].add_adapter()
        elif experience == 0:  # every block starts with one adapter, trained on task 0
            for pool in self.pools.values():
                pool.add_adapter()
            self.expanded.append(list(self.pools))
        self._set_stage("none")

    def _set_stage(self, stage: str, layers: list[str] = ()) -> None:
        """Which parameters train: the newest adapters of ``layers`` + head, their descriptors, or the head only."""
        self.stage = stage
        for name, pool in self.pools.items():
            active = name in layers
            pool.set_trainable(adapter=active and stage == "adapter", descriptor=active and stage == "rd")
            pool.set_mode("train_rd" if active and stage == "rd" else None)
        if self.head is not None:
            self.head.requires_grad_(stage in ("adapter", "head"))

    # -- training ----------------------------------------------------------------
    def fit_experience(self, experience: int, loader: DataLoader, fit: FitFn) -> None:
        if experience == 0:
            self._train_new(list(self.pools), loader, fit)
            return
        start = 0
        grown: list[str] = []
        while start < len(self.expandable):
            layer = self._first_shifted(self.expandable[start:], loader)
            if layer is None:
                break
            self._expand(layer, loader, fit)
            grown.append(layer)
            start = self.expandable.index(layer) + 1  # deeper layers are checked again on the grown model
        self.expanded.append(grown)
        if not grown:
            self._set_stage("head")
            fit(loader)

    def _pass(self, layers: list[str], mode: str, loader: DataLoader) -> None:
        """One forward pass over ``loader`` with ``layers`` in ``mode``."""
        self.eval()
        for name in layers:
            self.pools[name].set_mode(mode)
        with torch.no_grad():
            for batch in loader:
                self.features(batch[0].to(self.device))

    def _first_shifted(self, layers: list[str], loader: DataLoader) -> str | None:
        """Detection: the first of ``layers`` where every descriptor's mean z over the task's data exceeds the threshold."""
        self._pass(layers, "detect", loader)
        for name in layers:
            pool = self.pools[name]
            mean_z = torch.cat(pool.z_scores).mean(0)  # (n_adapters,)
            pool.set_mode(None)
            expand = bool((mean_z > self.cfg.threshold).all())
            self.decisions.append({
                "experience": self.current_experience + 1, "layer": name, "min_mean_z": float(mean_z.min()),
                "adapters": len(pool), "expanded": expand,
            })
            if expand:
                for rest in layers:
                    self.pools[rest].set_mode(None)
                return name
        return None

    def _expand(self, layer: str, loader: DataLoader, fit: FitFn) -> None:
        log.info("experience %d: expanding %s", self.current_experience + 1, layer)
        self.pools[layer].add_adapter()
        self._train_new([layer], loader, fit)

    def _train_new(self, layers: list[str], loader: DataLoader, fit: FitFn) -> None:
        """Train the newest adapters (+ router columns + head), then their descriptors, then freeze."""
        self._set_stage("adapter", layers)
        fit(loader)
        self._set_stage("rd", layers)
        fit(loader, max_epochs=self.cfg.rd_epochs)
        self._pass(layers, "record", loader)  # the trained descriptors' loss statistics
        self._set_stage("none")

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        if self.stage != "rd":
            return super().training_step(batch, batch_idx)
        self.features(batch[0])
        losses = [loss for pool in self.pools.values() if pool.mode == "train_rd" for loss in pool.rd_losses]
        for pool in self.pools.values():
            pool.rd_losses = []
        loss = torch.stack(losses).sum()
        self.log("rd_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch[0]))
        return loss

    def learning_rate(self) -> float:
        return self.cfg.rd_lr if self.stage == "rd" else self.cfg.optimizer.lr

    def trainable_parameters(self) -> int:
        """What this experience added and trained: its new adapters, routers, descriptors, and the head."""
        grown = self.expanded[self.current_experience] if self.current_experience < len(self.expanded) else []
        new = sum(p.numel() for name in grown for part in ("adapters", "router", "descriptors")
                  for p in getattr(self.pools[name], part)[-1].parameters())
        return new + (sum(p.numel() for p in self.head.parameters()) if self.head is not None else 0)

    # -- statistics and state ------------------------------------------------------
    def expert_stats(self) -> dict:
        return {
            "adapters_per_layer": {name: len(pool) for name, pool in self.pools.items()},
            "expansion_decisions": self.decisions,
            "activated_params_per_token": sum(pool.activated_params() for pool in self.pools.values()),
        }

    def extra_state(self) -> dict:
        return {**super().extra_state(), "expanded": self.expanded}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.expanded = [list(layers) for layers in state.get("expanded", [])]
