"""The method-comparison benchmark's plumbing: runs, table, peak memory, reuse of finished runs."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cl_bench.py"


def bench(tmp_path, *args):
    return subprocess.run([sys.executable, str(SCRIPT), "--scenario", "split_digits", "--methods", "prototype", "linear_probe",
                           "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_cl_bench_quick_writes_table_plot_and_memory(tmp_path):
    done = bench(tmp_path, "--quick")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads((tmp_path / "results" / "cl_split_digits_quick.json").read_text())
    assert out["seeds"] == [0] and "trainer.max_epochs=3" in out["overrides"]
    assert set(out["runs"]) == {"prototype", "linear_probe"}
    for runs in out["runs"].values():
        assert runs[0]["peak_memory_mib"] > 50 and runs[0]["memory_kind"] == "cpu resident"
        assert len(runs[0]["accuracy_matrix"]) == 5
    assert out["table_markdown"].count("\n") == 3 and "peak memory (MiB)" in out["table_markdown"]
    assert (tmp_path / "results" / "cl_split_digits_quick.png").stat().st_size > 1000
    # a second call reuses the finished runs, including the memory their training process measured
    again = bench(tmp_path, "--quick")
    assert again.returncode == 0
    second = json.loads((tmp_path / "results" / "cl_split_digits_quick.json").read_text())
    assert second["runs"]["linear_probe"][0]["peak_memory_mib"] == out["runs"]["linear_probe"][0]["peak_memory_mib"]
