"""ContinualRunner: the loop over experiences (design.md "One run", step 4)."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from moecl.errors import ConfigError, OutOfMemoryError, check_choice, check_range
from moecl.methods import ContinualMethod
from moecl.metrics import multi_domain, summarize
from moecl.scenarios import TaskStream
from moecl.training.atomic import write_json
from moecl.training.checkpoint import load_checkpoint, load_method_state, save_checkpoint
from moecl.training.data import cache_features, joint, make_loader

SCHEMA = 1
MODES = ("continual", "multitask")
log = logging.getLogger("moecl")


@dataclass
class Fitter:
    """What a method calls to train: ``fit(loader, max_epochs=None)`` runs one Lightning fit.

    Methods with their own loop (Avalanche peers) read ``max_epochs`` and ``device``.
    """

    runner: "ContinualRunner"
    experience: int
    joint: bool = False  # multitask mode: the loader holds every experience
    log_name: str | None = None  # log folder (default experience_<t+1>)
    calls: int = 0

    @property
    def max_epochs(self) -> int:
        return self.runner.trainer_cfg.max_epochs

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def avalanche_experience(self):
        """The benchmark's own train experience (for Avalanche strategies)."""
        if self.joint:
            raise ConfigError(f"method={self.runner.cfg.method.name!r} runs in mode=continual only; method=cumulative is Avalanche's joint-like peer")
        return self.runner.stream.benchmark.train_stream[self.experience]

    def __call__(self, loader: DataLoader, max_epochs: int | None = None) -> None:
        self.calls += 1
        self.runner._fit(self.experience, loader, max_epochs, stage=self.calls, log_name=self.log_name)


@dataclass
class Progress:
    """What a checkpoint carries besides tensors: every finished row and statistic."""

    rows: list[list[float]] = field(default_factory=list)
    initial: list[float] | None = None
    trainable: list[int] = field(default_factory=list)
    held_out: list[list[float]] = field(default_factory=list)  # row per evaluation: before training, then after each experience
    experts: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    within_task: list[float] | None = None  # multitask: the joint model's accuracy within each task's classes
    single_task: list[float] = field(default_factory=list)  # multitask: a model trained on task t alone, on task t


def resolve_device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "gpu":
        accelerator = "cuda"
    check_choice("trainer.accelerator", accelerator, ("auto", "cpu", "cuda", "gpu"))
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator='gpu' but no CUDA device is available; use trainer.accelerator=cpu")
    return torch.device(accelerator)


def fingerprint(cfg: DictConfig) -> str:
    """Hash of everything that determines the numbers (not paths, logging or debug flags)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: full[k] for k in ("backbone", "scenario", "method", "trainer", "seed", "mode") if k in full}
    keep["trainer"] = {k: v for k, v in keep.get("trainer", {}).items() if k not in ("progress_bar", "num_workers", "tensorboard")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class ContinualRunner:
    """Trains ``method`` on each experience of ``stream`` in turn and measures every test experience.

    After each experience the checkpoint and then ``metrics.json`` are written atomically
    to ``run_dir``; a runner started on a run_dir holding a checkpoint resumes after it.
    Each experience t reseeds from ``seed + t``, so a resumed run repeats exactly what an
    uninterrupted one does.
    """

    def __init__(self, method: ContinualMethod, stream: TaskStream, cfg: DictConfig, run_dir: str | Path) -> None:
        self.method = method
        self.stream = stream
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.trainer_cfg = cfg.trainer
        check_range("trainer.max_epochs", self.trainer_cfg.max_epochs, low=0, integer=True)
        check_range("trainer.batch_size", self.trainer_cfg.batch_size, low=1, integer=True)
        check_range("trainer.num_workers", self.trainer_cfg.num_workers, low=0, integer=True)
        check_choice("mode", cfg.mode, MODES)
        self.device = resolve_device(self.trainer_cfg.accelerator)
        self.seed = int(cfg.seed)
        self.fingerprint = fingerprint(cfg)
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        self.metrics_path = self.run_dir / "metrics.json"
        self._train_sets: list[Dataset] = [exp.dataset for exp in stream.benchmark.train_stream]
        self._test_sets: list[Dataset] = [exp.dataset for exp in stream.benchmark.test_stream]
        self._held_out: list[tuple] = list(stream.held_out)

    # -- public ----------------------------------------------------------------
    def run(self) -> dict:
        """Run (or resume, or return the finished result of) the whole stream."""
        # A pristine copy for the single-task references of multitask mode (before any state is loaded).
        self._pristine = copy.deepcopy(self.method) if self._single_task_reference() else None
        done = self._completed()
        if done is not None:
            log.info("run in %s is complete; not redone", self.run_dir)
            return done
        progress, start = self._resume()
        if self.method.frozen_features:
            self._cache_features()
        if self.cfg.mode == "multitask":
            return self._run_multitask(progress)
        if start == 0 and self._measure_initial():
            progress.initial = self._evaluate_all(within_task=True)
        if start == 0 and self.stream.held_out:
            progress.held_out.append(self._evaluate_held_out())
        for t in range(start, self.stream.num_experiences):
            began = time.perf_counter()
            L.seed_everything(self.seed + t, workers=True, verbose=False)
            classes = self.stream.classes_per_experience[t]
            self.method.before_experience(t, classes)
            self._train_and_measure(t, self._train_sets[t], progress, Fitter(self, t))
            if self.stream.held_out:
                progress.held_out.append(self._evaluate_held_out())
            progress.wall_time_s += time.perf_counter() - began
            self._save(t, progress, complete=t == self.stream.num_experiences - 1)
        return self._finish(progress)

    # -- steps -----------------------------------------------------------------
    def _single_task_reference(self) -> bool:
        wanted = self.cfg.eval.get("single_task")
        return self.cfg.mode == "multitask" and (wanted is None or bool(wanted)) and self.method.needs_training

    def _measure_initial(self) -> bool:
        measure = self.cfg.eval.initial_accuracy
        return self.stream.setting != "class_incremental" if measure is None else bool(measure)

    def _resume(self) -> tuple[Progress, int]:
        if not self.checkpoint_path.exists():
            return Progress(), 0
        if not self.method.resumable:
            log.warning("%s keeps state moecl cannot checkpoint: starting the run over", self.cfg.method.name)
            return Progress(), 0
        ckpt = load_checkpoint(self.checkpoint_path, self.fingerprint)
        done = int(ckpt["experience"]) + 1
        self.method.load_extra_state(ckpt["extra"])  # first: growth decisions drive the replay
        for t in range(done):
            self.method.before_experience(t, self.stream.classes_per_experience[t])
        load_method_state(self.method, ckpt["state"], self.checkpoint_path)
        self.method.load_extra_state(ckpt["extra"])  # again: the replay moved current_experience
        log.info("resuming %s after experience %d of %d", self.run_dir, done, self.stream.num_experiences)
        return Progress(**ckpt["progress"]), done

    def _cache_features(self) -> None:
        bs = self.cfg.eval.batch_size
        self._train_sets = [cache_features(self.method.backbone, d, bs, self.device) for d in self._train_sets]
        self._test_sets = [cache_features(self.method.backbone, d, bs, self.device) for d in self._test_sets]
        self._held_out = [(n, cache_features(self.method.backbone, d, bs, self.device), c) for n, d, c in self._held_out]

    def _fit(self, experience: int, loader: DataLoader, max_epochs: int | None = None, stage: int = 1, log_name: str | None = None) -> None:
        """One Lightning fit of the method on ``loader`` (``max_epochs`` defaults to trainer.max_epochs).

        ``stage`` numbers the fits of one experience (SEMA fits several times), so each
        gets its own log folder.
        """
        tc = self.trainer_cfg
        epochs = tc.max_epochs if max_epochs is None else max_epochs
        if not self.method.needs_training or epochs == 0:
            return
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if self.device.type == "cuda" else "cpu",
            devices=1,
            precision=tc.precision,
            gradient_clip_val=tc.gradient_clip_val,
            logger=self._loggers(log_name or f"experience_{experience + 1}", stage),
            enable_checkpointing=False,
            enable_progress_bar=tc.progress_bar,
            enable_model_summary=False,
            log_every_n_steps=tc.log_every_n_steps,
            num_sanity_val_steps=0,
        )
        try:
            with warnings.catch_warnings():
                # Expected here: few workers on CPU, a frozen backbone kept in eval mode, short epochs.
                for pattern in (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*", ".*smaller than the logging interval.*", ".*LeafSpec.*"):
                    warnings.filterwarnings("ignore", pattern)
                # Lightning keeps each module's mode; evaluation left the method in eval mode.
                self.method.train()
                trainer.fit(self.method, train_dataloaders=loader)
        except torch.OutOfMemoryError as err:
            raise OutOfMemoryError(
                f"out of memory on {self.device} in experience {experience + 1} with trainer.batch_size={tc.batch_size}; "
                "lower trainer.batch_size or use trainer.precision=bf16-mixed"
            ) from err

    def _loggers(self, name: str, stage: int = 1) -> list:
        """Lightning's CSV logger, plus TensorBoard when it is installed."""
        version = name + (f"_fit{stage}" if stage > 1 else "")
        loggers = [CSVLogger(self.run_dir, name="logs", version=version)]
        if self.trainer_cfg.tensorboard and importlib.util.find_spec("tensorboard") is not None:
            loggers.append(TensorBoardLogger(self.run_dir, name="tensorboard", version=version))
        return loggers

    @torch.no_grad()
    def _accuracy(self, dataset: Dataset, allowed: torch.Tensor) -> float:
        """Accuracy (%) of the argmax over the ``allowed`` classes."""
        metric = MulticlassAccuracy(num_classes=self.method.num_classes, average="micro").to(self.device)
        for batch in make_loader(dataset, self.cfg.eval.batch_size, shuffle=False):
            logits = self.method(batch[0].to(self.device)).masked_fill(~allowed, float("-inf"))
            metric.update(logits.argmax(-1), batch[1].to(self.device))
        return 100.0 * float(metric.compute())

    def _mask(self, classes: list[int]) -> torch.Tensor:
        allowed = torch.zeros(self.method.num_classes, dtype=torch.bool, device=self.device)
        allowed[classes] = True
        return allowed

    def _evaluate_all(self, within_task: bool = False) -> list[float]:
        """Row of R: accuracy on every test experience.

        Class-incremental: prediction over all classes seen so far (``within_task``: within
        the experience's classes, as for the untrained model, which has seen none). Task-incremental: within the
        experience's classes. All-classes (X-TAIL): over every class of the stream.
        """
        self.method.eval().to(self.device)
        every = [c for exp in self.stream.classes_per_experience for c in exp]
        row = []
        for j, classes in enumerate(self.stream.classes_per_experience):
            if self.stream.setting == "all_classes":
                allowed = self._mask(every)
            elif self.stream.setting == "task_incremental" or within_task:
                allowed = self._mask(classes)
            else:
                allowed = self.method.seen.to(self.device)
            self.method.on_evaluate_start(j)
            row.append(self._accuracy(self._test_sets[j], allowed))
            self.method.on_evaluate_end(j)
        return row

    def _evaluate_held_out(self) -> list[float]:
        """Zero-shot accuracy on each held-out domain, within its own classes."""
        self.method.eval().to(self.device)
        return [self._accuracy(data, self._mask(classes)) for _, data, classes in self._held_out]

    def _run_multitask(self, progress: Progress) -> dict:
        """All experiences trained jointly (the upper bound / multi-task use): one row of R.

        Then, unless ``eval.single_task=false``, one fresh model per task trained on that
        task alone gives the single-task reference; the checkpoint after each keeps finished
        work.
        """
        self.method.joint = True
        if not progress.rows:
            began = time.perf_counter()
            L.seed_everything(self.seed, workers=True, verbose=False)
            classes = sorted(c for exp in self.stream.classes_per_experience for c in exp)
            self.method.before_experience(0, classes)
            data = joint(self._train_sets)
            self._train_and_measure(0, data, progress, Fitter(self, 0, joint=True))
            progress.within_task = self._evaluate_all(within_task=True)
            progress.wall_time_s += time.perf_counter() - began
            self._save(0, progress, complete=self._pristine is None)
        if self._pristine is not None:
            self._run_single_tasks(progress)
        return self._finish(progress)

    def _train(self, experience: int, data: Dataset, fitter: Fitter, seed: int) -> None:
        """Fit the method on ``data`` as its experience ``experience``, then its after-experience statistics."""
        bs = self.trainer_cfg.batch_size
        self.method.fit_experience(experience, make_loader(data, bs, shuffle=True, seed=seed, num_workers=self.trainer_cfg.num_workers), fitter)
        self.method.after_experience(experience, make_loader(data, bs, shuffle=False))

    def _train_and_measure(self, t: int, data: Dataset, progress: Progress, fitter: Fitter) -> None:
        """Train on ``data`` as experience ``t``; append the trainable count, the row of R and the statistics."""
        self._train(t, data, fitter, seed=self.seed + t)
        progress.trainable.append(self.method.trainable_parameters())
        progress.rows.append(self._evaluate_all())
        progress.experts.append(self.method.expert_stats())

    def _run_single_tasks(self, progress: Progress) -> None:
        joint_method = self.method
        try:
            for t in range(len(progress.single_task), self.stream.num_experiences):
                began = time.perf_counter()
                L.seed_everything(self.seed + t, workers=True, verbose=False)
                self.method = copy.deepcopy(self._pristine).to(self.device)
                classes = self.stream.classes_per_experience[t]
                self.method.before_experience(0, classes)
                self._train(0, self._train_sets[t], Fitter(self, t, log_name=f"single_task_{t + 1}"), seed=self.seed + t)
                self.method.eval().to(self.device)
                progress.single_task.append(self._accuracy(self._test_sets[t], self._mask(classes)))
                progress.wall_time_s += time.perf_counter() - began
                self.method = joint_method
                self._save(0, progress, complete=t == self.stream.num_experiences - 1)
        finally:
            self.method = joint_method

    # -- results ---------------------------------------------------------------
    def metrics(self, progress: Progress, complete: bool) -> dict:
        """The metrics.json document (schema in design.md)."""
        rows = progress.rows
        if self.cfg.mode == "multitask":
            row = rows[0]
            acc = {
                "accuracy_matrix": rows, "average_accuracy": [sum(row) / len(row)], "last_accuracy": sum(row) / len(row),
                "average_incremental_accuracy": None, "forgetting": None, "bwt": None, "fwt": None, "initial_accuracy": None,
                "multitask": self._multitask_summary(progress),
            }
        else:
            done = len(rows)
            acc = summarize([r[:done] for r in rows], None if progress.initial is None else progress.initial[:done])
            acc["accuracy_matrix"] = rows
            if self.stream.domains:
                acc["domains"] = self.stream.domains
                acc.update(multi_domain(rows) if complete else {"transfer": None, "average": None, "last": None})
        if self.stream.held_out:
            acc["out_of_domain"] = {
                name: {
                    "zero_shot": progress.held_out[0][i],
                    "after_experience": [r[i] for r in progress.held_out[1:]],
                    "forgetting": progress.held_out[0][i] - progress.held_out[-1][i] if len(progress.held_out) > 1 else None,
                }
                for i, (name, _, _) in enumerate(self.stream.held_out)
            }
        return {
            "schema": SCHEMA,
            "method": self.cfg.method.name,
            "scenario": self.cfg.scenario.get("name", "custom"),
            "backbone": self.method.backbone.name,
            "setting": self.stream.setting,
            "mode": self.cfg.mode,
            **acc,
            "params": {
                "trainable_per_experience": progress.trainable,
                "total": sum(p.numel() for p in self.method.parameters()),
                "backbone": self._backbone_params(),
            },
            "experts": {"per_experience": progress.experts},
            "class_order": self.stream.class_order,
            "classes_per_experience": self.stream.classes_per_experience,
            "class_order_seed": self.cfg.scenario.get("class_order_seed"),
            "seed": self.seed,
            "experiences_done": len(rows),
            "wall_time_s": round(progress.wall_time_s, 3),
            "fingerprint": self.fingerprint,
            "complete": complete,
        }

    def _multitask_summary(self, progress: Progress) -> dict:
        """Per-task accuracy within each task's classes, the single-task references and the gap."""
        within, single = progress.within_task, progress.single_task
        done = within is not None and len(single) == len(within) > 0
        return {
            "within_task_accuracy": within,
            "within_task_average": None if within is None else sum(within) / len(within),
            "single_task_accuracy": single or None,
            "single_task_average": sum(single) / len(single) if done else None,
            # positive: training the tasks together beats training each alone
            "gap_to_single_task": sum(within) / len(within) - sum(single) / len(single) if done else None,
        }

    def _backbone_params(self) -> int:
        """Pretrained (frozen) parameters: everything in the backbone that is not an expert."""
        keys = self.method._frozen_keys
        return sum(p.numel() for n, p in self.method.named_parameters() if n in keys or ".base_layer." in n)

    def _completed(self) -> dict | None:
        """The metrics.json of this config's complete run, if it is on disk."""
        if not self.metrics_path.exists():
            return None
        done = json.loads(self.metrics_path.read_text())
        return done if done.get("complete") and done.get("fingerprint") == self.fingerprint else None

    def _finish(self, progress: Progress) -> dict:
        """The complete metrics.json; written here only when a kill after the last checkpoint left it stale or absent."""
        done = self._completed()
        if done is None:
            write_json(self.metrics_path, self.metrics(progress, complete=True))
            done = json.loads(self.metrics_path.read_text())
        return done

    def _save(self, experience: int, progress: Progress, complete: bool) -> None:
        # Checkpoint first: metrics.json never claims an experience the checkpoint lacks.
        save_checkpoint(
            self.checkpoint_path,
            experience=experience,
            state=self.method.expert_state_dict(),
            extra=self.method.extra_state(),
            progress=progress.__dict__,
            fingerprint=self.fingerprint,
        )
        write_json(self.metrics_path, self.metrics(progress, complete))
