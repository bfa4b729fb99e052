"""``run(cfg)``: the library entry point (the CLI is a thin shell around it)."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from moecl.backbones import build_backbone
from moecl.errors import ConfigError
from moecl.methods import build_method
from moecl.reporting import print_report, write_run_files
from moecl.scenarios import TaskStream, build_stream, stream_from_benchmark
from moecl.training.atomic import write_text
from moecl.training.runner import ContinualRunner

log = logging.getLogger("moecl")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for ``overrides`` (e.g. ["method=seq_lora"]), as the CLI would build it.

    For notebooks and tests: ``run(compose_config([...]), run_dir=...)``.
    """
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="moecl.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def resolved(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every interpolation resolved; a missing required value is one line."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is required (it is ??? in the config); set {err.full_key}=<value>") from err
    except InterpolationResolutionError as err:
        missing = re.search(r"Missing mandatory value: ([\w.]+)", str(err))
        if missing:
            key = missing.group(1)
            raise ConfigError(f"{key} is required by {err.full_key}; set {key}=<value>") from err
        raise ConfigError(f"{err.full_key}: {str(err).splitlines()[0]}") from err


def _default_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")


def run(cfg: DictConfig, benchmark: object | None = None, run_dir: str | Path | None = None) -> dict:
    """Build backbone, stream and method from ``cfg``, run them, write and return the metrics.

    Args:
        cfg: the composed config (see ``compose_config``).
        benchmark: an Avalanche benchmark of your own (train_stream / test_stream with
            labelled experiences) to use instead of ``cfg.scenario``.
        run_dir: where results and checkpoints go; default: Hydra's run dir, else
            ``outputs/<date>/<time>``. A run dir holding a checkpoint of the same config resumes.

    Returns:
        The metrics.json document as a dict.
    """
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"cfg must be an omegaconf DictConfig (use moecl.run.compose_config), got {type(cfg).__name__}")
    cfg = resolved(cfg)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir()
    # Heads and injected experts are initialised from the global generator: seed it first.
    L.seed_everything(int(cfg.seed), verbose=False)
    stream: TaskStream = build_stream(cfg.scenario) if benchmark is None else stream_from_benchmark(benchmark, cfg.scenario.setting)
    backbone = build_backbone(cfg.backbone)
    method = build_method(cfg.method, backbone, stream.num_classes, stream.class_names or None)
    runner = ContinualRunner(method, stream, cfg, run_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    write_text(run_dir / "config.yaml", config_yaml)
    metrics = runner.run()
    write_run_files(run_dir, metrics, config_yaml)
    if cfg.get("print_report", True):
        print_report(metrics)
        log.info("results in %s", run_dir)
    return metrics
