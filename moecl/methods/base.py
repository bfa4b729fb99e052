"""The base LightningModule every method extends, with its experience hooks."""
from __future__ import annotations

import math

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from moecl.backbones import Backbone
from moecl.errors import ConfigError, TrainingDivergedError, check_choice, check_range
from moecl.experts.routing import BALANCE_MODES, Router
from moecl.heads import LinearHead, PrototypeHead, TextHead

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
TRAIN_LOGITS = ("current", "seen")
HEADS = ("linear", "cosine", "text")
CLASSIFIERS = ("head", "prototype")


class ContinualMethod(L.LightningModule):
    """A backbone, its experts and a head, trained one experience at a time.

    Subclasses add experts in ``__init__`` (injection) and ``before_experience``
    (growth, freezing). ``before_experience`` must only change structure and
    trainability, deterministically from (t, classes): resuming replays it for every
    finished experience before loading the saved state.

    Prediction uses the trained head, or with ``classifier: prototype`` the class
    means of the (adapted) features, each stored when its task ends: old classes then
    keep their decision rule, and forgetting measures how far the representation
    drifted.

    Class attributes:
        frozen_features: inputs are precomputed backbone features (the runner caches them).
        needs_training: False for methods that only fit statistics (prototype).
        resumable: False when the method keeps state a checkpoint cannot hold.
    """

    frozen_features = False
    needs_training = True
    resumable = True

    def __init__(self, backbone: Backbone, num_classes: int, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.num_classes = num_classes
        self.validate()
        self.head = self.build_head(class_names)
        self.prototypes = PrototypeHead(backbone.feature_dim, num_classes) if cfg.classifier == "prototype" else None
        self.current_experience = -1
        self.joint = False  # set by the runner in mode=multitask: one experience holds every task
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("train_classes", torch.zeros(num_classes, dtype=torch.bool))
        self._frozen_keys = {f"backbone.{k}" for k in backbone.state_dict()}

    # -- configuration -------------------------------------------------------
    def build_head(self, class_names: list[str] | None) -> nn.Module | None:
        head = self.cfg.get("head")
        if head == "text":
            if not hasattr(self.backbone, "encode_text"):
                raise ConfigError(f"method.head='text' needs a backbone with a text tower (openclip); {self.backbone.name} has none")
            if not class_names or len(class_names) != self.num_classes:
                raise ConfigError("method.head='text' needs the scenario's class names; this stream has none")
            return TextHead(self.backbone, class_names, list(self.cfg.templates))
        if not self.needs_training:
            return None
        return LinearHead(self.backbone.feature_dim, self.num_classes, cosine=head == "cosine", scale=self.cfg.head_scale)

    def validate(self) -> None:
        """Check the method's config; raise ConfigError naming the bad value."""
        check_choice("method.classifier", self.cfg.classifier, CLASSIFIERS)
        if self.cfg.get("head") is not None:
            check_choice("method.head", self.cfg.head, HEADS)
        if not self.needs_training:
            return
        if self.cfg.head != "text":
            check_range("method.head_scale", self.cfg.head_scale, low=0, low_inclusive=False)
        opt = self.cfg.optimizer
        check_choice("method.optimizer.name", opt.name, OPTIMIZERS)
        check_range("method.optimizer.lr", opt.lr, low=0, low_inclusive=False)
        check_range("method.optimizer.weight_decay", opt.weight_decay, low=0)
        check_choice("method.scheduler", self.cfg.scheduler, SCHEDULERS)
        check_choice("method.train_logits", self.cfg.train_logits, TRAIN_LOGITS)

    def validate_balance(self) -> None:
        """Check ``method.balance`` (routed methods)."""
        b = self.cfg.balance
        check_choice("method.balance.mode", b.mode, BALANCE_MODES)
        check_range("method.balance.coef", b.coef, low=0)
        check_range("method.balance.bias_rate", b.bias_rate, low=0)
        check_range("method.balance.window", b.window, low=1, integer=True)

    def make_router(self, d_in: int, top_k: int, formula: str = "switch", groups: int = 1, noisy: bool = False) -> Router:
        """A router with this method's balancing options."""
        b = self.cfg.balance
        return Router(d_in, top_k, b.mode, formula, groups, noisy, b.bias_rate, b.window)

    # -- experience hooks ----------------------------------------------------
    def before_experience(self, experience: int, classes: list[int]) -> None:
        """Grow the head to ``classes``; subclasses add/freeze experts (structure only)."""
        self.current_experience = experience
        self.seen[classes] = True
        self.train_classes.zero_()
        self.train_classes[classes if self.cfg.train_logits == "current" else self.seen] = True

    def fit_experience(self, experience: int, loader: torch.utils.data.DataLoader, fit) -> None:
        """Train on ``experience``: ``fit(loader, max_epochs=None)`` runs one Lightning fit.

        Methods with stages (SEMA: detect, expand, train adapter, train descriptor) call it
        several times with their own trainable parameters.
        """
        fit(loader)

    def learning_rate(self) -> float:
        """Learning rate of the expert parameters in the current fit."""
        return self.cfg.optimizer.lr

    def after_experience(self, experience: int, train_loader: torch.utils.data.DataLoader) -> None:
        """After training on ``experience``: store its class prototypes (when they classify)."""
        if self.prototypes is None:
            return
        self.eval()
        feats, labels = [], []
        with torch.no_grad():
            for batch in train_loader:
                feats.append(self.features(batch[0].to(self.device)))
                labels.append(batch[1].to(self.device))
        self.prototypes.fit(torch.cat(feats), torch.cat(labels))

    def on_evaluate_start(self, test_experience: int) -> None:
        """Called before evaluating a test experience (e.g. to start usage statistics)."""

    def on_evaluate_end(self, test_experience: int) -> None:
        """Called after evaluating a test experience."""

    def counts_statistics(self, test_experience: int) -> bool:
        """Expert statistics are measured on the test data of the task just trained (every task in multitask mode)."""
        return self.joint or test_experience == self.current_experience

    def starts_statistics(self, test_experience: int) -> bool:
        """The first test experience of an evaluation pass that counts (statistics restart there)."""
        return test_experience == (0 if self.joint else self.current_experience)

    def balance_loss(self) -> torch.Tensor | None:
        """Sum of the routers' auxiliary balancing losses of the last forward, times ``method.balance.coef``.

        Each router's loss is read once and cleared, so a router that did not run in
        this step (a frozen past task's) adds nothing.
        """
        losses = []
        for module in self.modules():
            if isinstance(module, Router) and module.aux_loss is not None:
                losses.append(module.aux_loss)
                module.aux_loss = None
        if not losses:
            return None
        return self.cfg.balance.coef * torch.stack(losses).sum()

    def expert_stats(self) -> dict:
        """Experts per layer and method-specific statistics for metrics.json ``experts``."""
        return {}

    def extra_state(self) -> dict:
        """Method state beyond tensors, saved in checkpoints (plain types only)."""
        return {"current_experience": self.current_experience}

    def load_extra_state(self, state: dict) -> None:
        self.current_experience = int(state.get("current_experience", -1))

    # -- forward -------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.frozen_features else self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores over every class of the stream (unmasked): the head while training, the classifier otherwise."""
        features = self.features(x)
        if self.prototypes is not None and not self.training:
            return self.prototypes(features)
        if isinstance(self.head, TextHead):
            return self.head(features, self.train_classes if self.training else None)
        return self.head(features)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x).masked_fill(~self.train_classes, float("-inf"))
        loss = F.cross_entropy(logits, y)
        aux = self.balance_loss()
        if aux is not None:
            self.log("balance_loss", aux, on_step=True, on_epoch=False, batch_size=len(y))
            loss = loss + aux
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"loss became {loss.item()} in experience {self.current_experience + 1} at step {self.global_step}; "
                "lower method.optimizer.lr or set trainer.gradient_clip_val"
            )
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> dict:
        opt = self.cfg.optimizer
        head = [p for p in self.head.parameters() if p.requires_grad] if self.head is not None else []
        head_ids = {id(p) for p in head}
        experts = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        if not head and not experts:
            raise ConfigError(f"method={self.cfg.name!r} has no trainable parameters in experience {self.current_experience + 1}")
        # The head starts from scratch each task while experts refine a pretrained model,
        # so the head may take its own (usually larger) learning rate.
        lr = self.learning_rate()
        groups = [{"params": experts}, {"params": head, "lr": opt.get("head_lr") or lr}]
        groups = [g for g in groups if g["params"]]
        if opt.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
        else:
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
        if self.cfg.scheduler == "constant":
            return {"optimizer": optimizer}
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- bookkeeping ---------------------------------------------------------
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def expert_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen pretrained weights (which the config rebuilds)."""
        return {k: v for k, v in self.state_dict().items() if k not in self._frozen_keys and ".base_layer." not in k}
