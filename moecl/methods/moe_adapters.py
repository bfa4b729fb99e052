"""MoE-adapters (MoE-Adapters4CL style): the mixture-of-adapters baseline of design.md "Methods".

Per block: a shared pool of bottleneck adapters beside the MLP and one noisy top-k router
per task (TaskRoutedAdapters), trained with the CV^2 balancing loss. Past routers are
frozen; after each task the experts its router used most are frozen too (the paper's
activate-freeze, ``freeze_per_task``), so later tasks reuse but do not overwrite them.

Task selection at test time (the paper's distribution-discriminative auto-selector): an
autoencoder per task on the frozen model's features; a sample goes to the task whose
autoencoder reconstructs it best, or, when even that error exceeds the task's threshold
(a quantile of its training errors times ``selector.margin``), to the frozen model. With
the prototype classifier, fallback samples are classified by class means of frozen
features, stored per task beside the adapted ones.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from moecl.backbones import Backbone
from moecl.errors import check_range
from moecl.experts.adapter_mixture import TaskRoutedAdapters
from moecl.experts.inject import wrap_block_mlps
from moecl.experts.routing import coefficient_of_variation
from moecl.heads import PrototypeHead
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register


class TaskAutoencoder(nn.Module):
    """d -> hidden -> d autoencoder on frozen features; ``threshold`` marks what it fits."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.register_buffer("threshold", torch.tensor(float("inf")))

    def error(self, features: torch.Tensor) -> torch.Tensor:
        return (self.net(features) - features).pow(2).mean(-1)


@register("moe_adapters")
class MoEAdapters(ContinualMethod):
    """Shared adapter experts, a router per task, an autoencoder task selector."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        make_router = lambda: self.make_router(backbone.feature_dim, cfg.top_k, formula="cv", noisy=cfg.noisy)  # noqa: E731
        self.pools: dict[str, TaskRoutedAdapters] = wrap_block_mlps(
            backbone, "moe_adapters", lambda mlp: TaskRoutedAdapters(mlp, backbone.feature_dim, cfg.bottleneck, cfg.experts, make_router)
        )
        self.selectors = nn.ModuleList()
        self.frozen_prototypes = PrototypeHead(backbone.feature_dim, num_classes) if self.prototypes is not None else None
        self.last_routing: dict | None = None
        self._counts: dict[str, torch.Tensor] = {}
        self._selection = torch.zeros(3, dtype=torch.long)  # right task, wrong task, fallback
        self._test_experience: int | None = None  # the test experience being counted, if any

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        check_range("method.experts", cfg.experts, low=1, integer=True)
        check_range("method.top_k", cfg.top_k, low=1, high=cfg.experts, integer=True)
        check_range("method.bottleneck", cfg.bottleneck, low=1, integer=True)
        check_range("method.freeze_per_task", cfg.freeze_per_task, low=0, high=cfg.experts, integer=True)
        s = cfg.selector
        check_range("method.selector.hidden", s.hidden, low=1, integer=True)
        check_range("method.selector.epochs", s.epochs, low=1, integer=True)
        check_range("method.selector.lr", s.lr, low=0, low_inclusive=False)
        check_range("method.selector.quantile", s.quantile, low=0, high=1)
        check_range("method.selector.margin", s.margin, low=0, low_inclusive=False)
        self.validate_balance()

    # -- structure -------------------------------------------------------------
    def before_experience(self, experience: int, classes: list[int]) -> None:
        super().before_experience(experience, classes)
        for pool in self.pools.values():
            pool.add_task()  # frozen experts stay frozen: requires_grad persists (and is restored on resume)
        self.selectors.append(TaskAutoencoder(self.backbone.feature_dim, self.cfg.selector.hidden).to(self.device))
        self.selectors[-1].requires_grad_(False)
        self._set_task(experience)

    def frozen_experts(self) -> list[list[int]]:
        """Per block, the experts frozen so far."""
        return [[e for e, a in enumerate(pool.adapters) if not any(p.requires_grad for p in a.parameters())] for pool in self.pools.values()]

    def _set_task(self, task: torch.Tensor | int | None) -> None:
        for pool in self.pools.values():
            pool.task = task

    # -- training ----------------------------------------------------------------
    def fit_experience(self, experience: int, loader: DataLoader, fit) -> None:
        """Train adapters + router (counting which experts the router uses), then the task's autoencoder."""
        routers = [pool.routers[-1] for pool in self.pools.values()]
        for router in routers:
            router.counts = router.new_counts()
        self._set_task(experience)
        fit(loader)
        self._freeze_most_used([r.counts for r in routers])
        for router in routers:
            router.counts = None
        self._fit_selector(loader)

    def _freeze_most_used(self, counts: list[torch.Tensor]) -> None:
        k = self.cfg.freeze_per_task
        for pool, c in zip(self.pools.values(), counts):
            if k and c is not None and c.sum() > 0:
                for e in torch.topk(c, k).indices.tolist():
                    pool.adapters[e].requires_grad_(False)

    @torch.no_grad()
    def plain_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the frozen model (no adapters)."""
        self._set_task(None)
        try:
            return self.backbone(x)
        finally:
            self._set_task(self.current_experience)

    def _fit_selector(self, loader: DataLoader) -> None:
        s = self.cfg.selector
        was_training = self.training
        self.eval()
        feats = torch.cat([self.plain_features(batch[0].to(self.device)) for batch in loader])
        ae = self.selectors[-1]
        ae.requires_grad_(True).train()
        opt = torch.optim.Adam(ae.parameters(), lr=s.lr)
        generator = torch.Generator().manual_seed(len(self.selectors))
        with torch.enable_grad():
            for _ in range(s.epochs):
                for idx in torch.randperm(len(feats), generator=generator).split(256):
                    opt.zero_grad()
                    ae.error(feats[idx]).mean().backward()
                    opt.step()
        ae.requires_grad_(False).eval()
        with torch.no_grad():
            ae.threshold.fill_(float(torch.quantile(ae.error(feats), s.quantile)) * s.margin)
        self.train(was_training)

    def after_experience(self, experience: int, train_loader: DataLoader) -> None:
        self._set_task(experience)
        super().after_experience(experience, train_loader)
        if self.frozen_prototypes is not None:
            self.eval()
            feats, labels = [], []
            for batch in train_loader:
                feats.append(self.plain_features(batch[0].to(self.device)))
                labels.append(batch[1].to(self.device))
            self.frozen_prototypes.fit(torch.cat(feats), torch.cat(labels))

    # -- prediction --------------------------------------------------------------
    @torch.no_grad()
    def select_task(self, frozen: torch.Tensor) -> torch.Tensor:
        """Each sample's task (router index) by the best-fitting autoencoder; -1 when none fits."""
        errors = torch.stack([ae.error(frozen) for ae in self.selectors], -1)
        thresholds = torch.stack([ae.threshold for ae in self.selectors])
        best = errors.argmin(-1)
        fits = errors.gather(-1, best[:, None]).squeeze(-1) <= thresholds[best]
        return torch.where(fits, best, torch.full_like(best, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not len(self.selectors):
            self._set_task(self.current_experience)
            return super().forward(x)
        frozen = self.plain_features(x)
        task = self.select_task(frozen)
        self._set_task(task)
        try:
            scores = super().forward(x)
        finally:
            self._set_task(self.current_experience)
        self._record_selection(task)
        fallback = task < 0
        if fallback.any() and self.frozen_prototypes is not None:
            scores[fallback] = self.frozen_prototypes(frozen[fallback])
        return scores

    # -- statistics ----------------------------------------------------------------
    def on_evaluate_start(self, test_experience: int) -> None:
        if self.starts_statistics(test_experience):
            self._selection.zero_()
            self._counts = {name: pool.routers[-1].new_counts() for name, pool in self.pools.items()}
        counting = self.counts_statistics(test_experience)
        self._test_experience = test_experience if counting else None
        for name, pool in self.pools.items():
            for router in pool.routers:
                router.counts = None
            pool.routers[-1].counts = self._counts[name] if counting else None

    def _record_selection(self, task: torch.Tensor) -> None:
        if self._test_experience is None:
            return
        right = 0 if self.joint else self._test_experience
        self._selection += torch.stack([(task == right).sum(), ((task >= 0) & (task != right)).sum(), (task < 0).sum()]).cpu()

    def on_evaluate_end(self, test_experience: int) -> None:
        for pool in self.pools.values():
            pool.routers[-1].counts = None
        if not self.counts_statistics(test_experience):
            return
        self._test_experience = None
        cv = [coefficient_of_variation(c) for c in self._counts.values()]
        total = max(int(self._selection.sum()), 1)
        self.last_routing = {
            "experience": test_experience + 1,
            "load_cv": sum(cv) / len(cv),
            "task_selection": {"right": int(self._selection[0]) / total, "wrong": int(self._selection[1]) / total, "fallback": int(self._selection[2]) / total},
            "frozen_experts_per_block": [len(f) for f in self.frozen_experts()],
        }

    def expert_stats(self) -> dict:
        return {
            "experts_per_block": self.cfg.experts,
            "routers": len(self.selectors),
            "routing": self.last_routing,
            # a sample routed to its task's adapters; one sent to the frozen model activates none
            "activated_params_per_token": sum(pool.activated_params() for pool in self.pools.values()),
        }

    def extra_state(self) -> dict:
        return {**super().extra_state(), "frozen_experts": self.frozen_experts()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        for pool, frozen in zip(self.pools.values(), state.get("frozen_experts", [])):
            for e in frozen:
                pool.adapters[e].requires_grad_(False)
