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
