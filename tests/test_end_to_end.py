"""A tiny end-to-end run per method and per mode, and the CLI's one-line errors."""
import json
import subprocess
import sys

import pytest

from moecl.run import run

SCHEMA_KEYS = {
    "schema", "accuracy_matrix", "average_accuracy", "last_accuracy", "average_incremental_accuracy",
    "forgetting", "bwt", "fwt", "params", "experts", "class_order", "seed", "wall_time_s", "complete",
}


@pytest.mark.parametrize("method", ["mora", "seq_lora", "linear_probe", "prototype"])
def test_each_method_runs_end_to_end(fast_cfg, tmp_path, method):
    metrics = run(fast_cfg(f"method={method}"), run_dir=tmp_path)
    assert SCHEMA_KEYS <= set(metrics)
    assert metrics["complete"] is True
    R = metrics["accuracy_matrix"]
    assert len(R) == 5 and all(len(r) == 5 for r in R)
    # class-incremental: a class never seen cannot be predicted
    assert all(R[t][j] == 0.0 for t in range(5) for j in range(t + 1, 5))
    assert R[0][0] > 50.0, R  # the first task (2 classes) is learned
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["accuracy_matrix"] == R
    for name in ("config.yaml", "accuracy_matrix.csv", "heatmap.png", "report.md", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    assert metrics["params"]["backbone"] > 0 and len(metrics["params"]["trainable_per_experience"]) == 5


def test_mora_reports_growth_and_rank_usage(fast_cfg, tmp_path):
    metrics = run(fast_cfg("method=mora", "method.rank_per_task=4", "method.top_k=2"), run_dir=tmp_path)
    per_exp = metrics["experts"]["per_experience"]
    assert [set(e["atoms_per_layer"].values()) for e in per_exp] == [{4 * (t + 1)} for t in range(5)]
    for t, e in enumerate(per_exp):
        assert len(e["usage"]["utilisation"]) == 4 * (t + 1)
        assert 0 < e["usage"]["active_ranks_per_token"] <= 2
    assert (tmp_path / "rank_usage.png").is_file()
    # trainable parameters stay constant per task (old atoms frozen)
    trainable = metrics["params"]["trainable_per_experience"]
    assert len(set(trainable)) == 1


def test_task_incremental_predicts_within_the_task(fast_cfg, tmp_path):
    metrics = run(fast_cfg("method=prototype", "scenario.setting=task_incremental"), run_dir=tmp_path)
    assert metrics["setting"] == "task_incremental"
    assert metrics["fwt"] is not None  # b_j is measured in task-incremental runs
    # within a 2-class task, chance is 50%: the untrained model is measured, future tasks too
    assert all(v > 0 for v in metrics["accuracy_matrix"][0])


def test_multitask_mode_trains_jointly(fast_cfg, tmp_path):
    metrics = run(fast_cfg("method=linear_probe", "mode=multitask", "trainer.max_epochs=3"), run_dir=tmp_path)
    assert len(metrics["accuracy_matrix"]) == 1 and len(metrics["accuracy_matrix"][0]) == 5
    assert metrics["forgetting"] is None and metrics["last_accuracy"] > 20.0
    mt = metrics["multitask"]
    within, single = mt["within_task_accuracy"], mt["single_task_accuracy"]
    assert len(within) == len(single) == 5
    # within a task's own classes the joint model cannot do worse than over all ten
    assert all(w >= a for w, a in zip(within, metrics["accuracy_matrix"][0]))
    assert mt["gap_to_single_task"] == pytest.approx(sum(within) / 5 - sum(single) / 5)
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"experience_1", *(f"single_task_{t}" for t in range(1, 6))}


def test_multitask_without_single_task_reference(fast_cfg, tmp_path):
    metrics = run(fast_cfg("method=linear_probe", "mode=multitask", "eval.single_task=false"), run_dir=tmp_path)
    assert metrics["complete"] and metrics["multitask"]["single_task_accuracy"] is None
    assert metrics["multitask"]["gap_to_single_task"] is None


@pytest.mark.parametrize("method", ["smora", "flylora", "mixlora", "loramoe"])
def test_routed_methods_report_load(fast_cfg, tmp_path, method):
    metrics = run(fast_cfg(f"method={method}", "trainer.max_epochs=1"), run_dir=tmp_path)
    assert metrics["complete"] and metrics["accuracy_matrix"][0][0] > 50.0
    stats = metrics["experts"]["per_experience"][-1]
    usage = stats.get("usage") or stats["routing"]
    assert usage["load_cv"] >= 0 and usage["activated_params_per_token"] > 0
    if method in ("smora", "flylora"):
        assert usage["active_ranks_per_token"] == pytest.approx(4.0)  # top_k of every token


def test_user_built_benchmark(fast_cfg, tmp_path):
    import torch
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 4
    x = torch.rand(120, 1, 8, 8, generator=g) * 0.2 + y.view(-1, 1, 1, 1) * 0.25
    bm = class_incremental_benchmark({"train": TensorDataset(x, y), "test": TensorDataset(x, y)}, class_order=[0, 1, 2, 3], num_experiences=2)
    metrics = run(fast_cfg("method=prototype"), benchmark=bm, run_dir=tmp_path)
    assert metrics["classes_per_experience"] == [[0, 1], [2, 3]]
    assert len(metrics["accuracy_matrix"]) == 2


def moecl(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moecl.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_unknown_method_is_one_line_listing_the_options(tmp_path):
    out = moecl("method=nope", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "mora" in lines[0] and "seq_lora" in lines[0]
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_value_is_one_line_and_debug_shows_traceback(tmp_path):
    out = moecl("method.tau=0", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: method.tau=0")
    assert "Traceback" not in out.stderr
    dbg = moecl("method.tau=0", "debug=true", f"hydra.run.dir={tmp_path}/run2", cwd=tmp_path)
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr + dbg.stdout


@pytest.mark.parametrize("peer", ["naive", "ewc", "lwf", "replay", "cumulative"])
def test_avalanche_peers_run_through_moecl_metrics(fast_cfg, tmp_path, peer):
    metrics = run(fast_cfg(f"method={peer}", "trainer.max_epochs=1", "scenario.num_experiences=2"), run_dir=tmp_path)
    R = metrics["accuracy_matrix"]
    assert len(R) == 2 and R[0][0] > 50.0 and R[0][1] == 0.0
    # the backbone itself is fine-tuned: every parameter trains
    assert metrics["params"]["trainable_per_experience"][0] == metrics["params"]["total"]


def test_peers_refuse_multitask_mode(fast_cfg, tmp_path):
    from moecl.errors import ConfigError

    with pytest.raises(ConfigError, match="mode=continual only"):
        run(fast_cfg("method=naive", "mode=multitask", "trainer.max_epochs=1"), run_dir=tmp_path)
