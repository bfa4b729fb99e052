"""Resume after SIGKILL, atomic results, determinism, corrupt checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from moecl.errors import CheckpointError
from moecl.run import run
from moecl.training import atomic
from moecl.training.checkpoint import load_checkpoint

ARGS = ["method=mora", "method.rank_per_task=4", "method.top_k=2", "trainer.max_epochs=3", "trainer.progress_bar=false", "print_report=false"]


def start(run_dir, cwd):
    return subprocess.Popen([sys.executable, "-m", "moecl.cli", *ARGS, f"hydra.run.dir={run_dir}"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_run_resumes_to_the_same_matrix(tmp_path):
    killed = tmp_path / "killed"
    proc = start(killed, tmp_path)
    deadline = time.time() + 240
    # metrics.json is written after the checkpoint, so once it exists both do.
    while not (killed / "metrics.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((killed / "metrics.json").read_text())
    assert partial["complete"] is False and 1 <= partial["experiences_done"] < 5
    resumed = start(killed, tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    fresh = tmp_path / "fresh"
    assert start(fresh, tmp_path).wait(timeout=300) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (killed, fresh))
    assert a["complete"] and b["complete"]
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["experts"] == b["experts"]


@pytest.mark.parametrize("left", ["absent", "stale"])
@pytest.mark.parametrize("mode", ["continual", "multitask"])
def test_kill_between_checkpoint_and_metrics_resumes_from_the_checkpoint(fast_cfg, tmp_path, mode, left):
    cfg = fast_cfg("method=seq_lora", "method.rank=4", f"mode={mode}")
    first = run(cfg, run_dir=tmp_path)
    # the checkpoint is ahead of metrics.json: none yet, or the one of an earlier experience
    if left == "absent":
        (tmp_path / "metrics.json").unlink()
    else:
        atomic.write_json(tmp_path / "metrics.json", {**first, "complete": False, "accuracy_matrix": first["accuracy_matrix"][:1]})
    again = run(cfg, run_dir=tmp_path)
    assert again["complete"] and again["accuracy_matrix"] == first["accuracy_matrix"]
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy_matrix"] == first["accuracy_matrix"]


def test_same_seeds_give_identical_matrix_and_a_complete_run_is_not_redone(fast_cfg, tmp_path):
    cfg = fast_cfg("method=seq_lora", "method.rank=4")
    first = run(cfg, run_dir=tmp_path / "a")
    second = run(cfg, run_dir=tmp_path / "b")
    assert first["accuracy_matrix"] == second["accuracy_matrix"]
    stamp = (tmp_path / "a" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run(cfg, run_dir=tmp_path / "a")
    assert again["accuracy_matrix"] == first["accuracy_matrix"]
    assert (tmp_path / "a" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_other_seed_changes_the_run(fast_cfg, tmp_path):
    a = run(fast_cfg("method=seq_lora", "method.rank=4"), run_dir=tmp_path / "a")
    b = run(fast_cfg("method=seq_lora", "method.rank=4", "seed=1"), run_dir=tmp_path / "b")
    assert a["accuracy_matrix"] != b["accuracy_matrix"]


def test_interrupted_write_leaves_previous_file_readable(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.write_json(target, {"v": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_corrupt_or_foreign_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "last.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "x")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_checkpoint_of_another_config_is_refused(fast_cfg, tmp_path):
    run(fast_cfg("method=linear_probe"), run_dir=tmp_path)
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="another config"):
        run(fast_cfg("method=linear_probe", "method.optimizer.lr=0.1"), run_dir=tmp_path)
