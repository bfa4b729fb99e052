"""Every bad input gives one line on stderr naming the bad value, its exit code, and no traceback."""
import subprocess
import sys

import pytest
import torch

CASES = [
    (["method=nope"], 2, ["method='nope'", "mora", "seq_lora"]),
    (["scenario=nope"], 2, ["scenario='nope'", "split_digits"]),
    (["method.top_k=1"], 2, ["method.top_k=1", "2 <= top_k <= rank_per_task"]),
    (["method.top_k=17"], 2, ["method.top_k=17", "rank_per_task (16)"]),
    (["method.tau=0"], 2, ["method.tau=0", "0 < tau"]),
    (["trainer.max_epochs=-1"], 2, ["trainer.max_epochs=-1", "0 <= max_epochs"]),
    (["mode=online"], 2, ["mode='online'", "continual, multitask"]),
    (["method.targets=[nope]"], 2, ["method.targets=['nope']", "blocks.*.attn.qkv"]),
    (["method=smora", "method.balance.mode=nope"], 2, ["method.balance.mode='nope'", "none, aux, global, bias"]),
    (["method=flylora", "method.balance.mode=aux"], 2, ["method.balance.mode='aux'", "use bias or none"]),
    (["method=loramoe", "method.groups=3"], 2, ["method.groups=3", "method.experts=8"]),
    (["scenario=split_fmnist", "scenario.root=/nonexistent/fmnist"], 3, ["scenario.root='/nonexistent/fmnist'", "dataset-fashion-mnist"]),
]


def moecl(args, cwd):
    return subprocess.run([sys.executable, "-m", "moecl.cli", *args, "trainer.progress_bar=false", f"hydra.run.dir={cwd}/run"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, code, needles", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line(tmp_path, args, code, needles):
    out = moecl(args, tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in out.stderr + out.stdout


def test_checkpoint_that_does_not_fit_the_backbone(tmp_path):
    bad = tmp_path / "w.pt"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 2)}, bad)
    out = moecl([f"backbone.checkpoint={bad}"], tmp_path)
    assert out.returncode == 4
    line = out.stderr.strip()
    assert "\n" not in line and "does not fit the backbone" in line and "(3, 2)" in line and "(192, 64)" in line


def test_divergence_keeps_finished_experiences(fast_cfg, tmp_path, monkeypatch):
    from moecl.errors import TrainingDivergedError
    from moecl.methods.probes import LinearProbe
    from moecl.run import run

    original = LinearProbe.before_experience

    def poison_second(self, experience, classes):
        original(self, experience, classes)
        if experience == 1:
            self.head.linear.weight.data.fill_(float("nan"))

    monkeypatch.setattr(LinearProbe, "before_experience", poison_second)
    with pytest.raises(TrainingDivergedError, match="experience 2 at step"):
        run(fast_cfg("method=linear_probe"), run_dir=tmp_path)
    import json

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["experiences_done"] == 1 and saved["complete"] is False
    assert (tmp_path / "checkpoints" / "last.pt").exists()
