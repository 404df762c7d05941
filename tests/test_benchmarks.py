"""The benchmark scripts start, take their shared arguments, and end with a clear message on bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_script_starts_and_documents_itself(name):
    done = run_script(name, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.parametrize("name", ["eval_speed.py", "localization_speed.py"])
def test_a_missing_default_cache_is_one_clear_message(name, tmp_path):
    done = run_script(name, "--cache-dir", str(tmp_path))
    assert done.returncode == 1
    assert "does not exist: run `make run` first" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("extra", "message"), [(["--dtype", "fp8"], "--dtype must be one of"),
                                                (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
                                                ([], "is not a model checkpoint")])
def test_eval_speed_names_a_bad_option_or_checkpoint(tmp_path, extra, message):
    (tmp_path / "bench").mkdir()
    (tmp_path / "model").mkdir()
    done = run_script("eval_speed.py", "--model", str(tmp_path / "model"), "--benchmark", str(tmp_path / "bench"), *extra)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_same_figures_counts_timings_and_names_any_other_difference(tmp_path):
    import json

    results = {"config": {"model_path": "/old/cache/m", "seed": 0},
               "unlearned": {"figures": {"forget": {"vqa": {"mcq_accuracy": 26.0}}}},
               "cost": {"wall_time_s": {"unlearn": 1.0}, "peak_memory_mb": 700}}
    for name, change in (("a", {}), ("b", {"cost": {"wall_time_s": {"unlearn": 2.5}, "peak_memory_mb": 710},
                                          "config": {"model_path": "/new/cache/m", "seed": 0}}),
                         ("c", {"unlearned": {"figures": {"forget": {"vqa": {"mcq_accuracy": 28.0}}}}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**results, **change}))
    same = run_script("same_figures.py", str(tmp_path / "a"), str(tmp_path / "b"), "--root-a", "/old", "--root-b", "/new")
    assert same.returncode == 0, same.stdout
    assert "0 differing figures or settings (2 timings and memory readings differ" in same.stdout
    other = run_script("same_figures.py", str(tmp_path / "a"), str(tmp_path / "c"))
    assert other.returncode == 1
    assert "/unlearned/figures/forget/vqa/mcq_accuracy: 26.0 != 28.0" in other.stdout
