"""Avalanche's classic strategies as peers, run unchanged on the same stream and backbone.

The model is the backbone made trainable (initialised from its pretrained weights) plus
a linear head over every class, trained the way each strategy normally trains (its
own loop, SGD, full fine-tuning). moecl only evaluates it, with the same protocol and
metrics as its own methods.
"""
from __future__ import annotations

import torch
from avalanche.training import EWC, LwF, Naive, Replay
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Cumulative
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from moecl.backbones import Backbone
from moecl.errors import check_choice, check_range
from moecl.methods.base import ContinualMethod
from moecl.methods.registry import register

STRATEGIES = ("naive", "ewc", "lwf", "replay", "cumulative")


class AvalanchePeer(ContinualMethod):
    """One of Avalanche's strategies (``method.strategy``) on the backbone, fully fine-tuned.

    Not resumable: the strategies keep state moecl cannot checkpoint (a replay buffer,
    EWC importances, LwF's previous model), so an interrupted peer run starts over.
    """

    resumable = False

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__(backbone, num_classes, cfg, class_names)
        backbone.model.requires_grad_(True)
        self._frozen_keys = set()  # everything trains: checkpoints keep it all
        self.strategy = None

    def validate(self) -> None:
        check_choice("method.strategy", self.cfg.strategy, STRATEGIES)
        check_range("method.lr", self.cfg.lr, low=0, low_inclusive=False)
        check_range("method.mem_size", self.cfg.mem_size, low=1, integer=True)

    def build_head(self, class_names: list[str] | None) -> nn.Module:
        return nn.Linear(self.backbone.feature_dim, self.num_classes)

    def _make_strategy(self, batch_size: int, epochs: int, device: torch.device):
        cfg = self.cfg
        net = _Net(self.backbone, self.head)
        common = dict(
            model=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=batch_size, train_epochs=epochs, eval_mb_size=batch_size,
            device=device, evaluator=EvaluationPlugin(loggers=[]),  # moecl evaluates
        )
        extra = {
            "naive": (Naive, {}), "cumulative": (Cumulative, {}),
            "ewc": (EWC, {"ewc_lambda": cfg.ewc_lambda}),
            "lwf": (LwF, {"alpha": cfg.lwf_alpha, "temperature": cfg.lwf_temperature}),
            "replay": (Replay, {"mem_size": cfg.mem_size}),
        }
        cls, kwargs = extra[cfg.strategy]
        return cls(**common, **kwargs)

    def fit_experience(self, experience: int, loader: DataLoader, fit) -> None:
        if self.strategy is None:
            self.strategy = self._make_strategy(loader.batch_size, fit.max_epochs, fit.device)
        self.train()
        self.strategy.train(fit.avalanche_experience)


class _Net(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


for _name in STRATEGIES:
    register(_name)(AvalanchePeer)
