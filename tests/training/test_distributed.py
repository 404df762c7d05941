"""Two processes (accelerate launch, CPU) give the same loss curve as one with the same global batch.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes N`` starts N
torchrun processes that accelerate joins with the gloo backend (``--cpu`` with several
processes needs MPI instead).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("ddp_losses.py")


def test_two_processes_match_one_process_with_the_same_global_batch(world_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher must be installed with the package"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = tmp_path / "one.json"
    subprocess.run([sys.executable, str(HELPER), str(single), "8", str(world_dir)], check=True, env=env)
    double = tmp_path / "two.json"
    subprocess.run([accelerate, "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", str(HELPER), str(double), "4", str(world_dir)], check=True, env=env)
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert len(one) == len(two) == 6
    # Same samples per global step, gradients averaged over the two halves, schedule stepped
    # once per step: the curves agree to float precision (not just at the first step).
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)


INJECT_HELPER = Path(__file__).with_name("ddp_inject.py")


def test_two_process_injection_trains_the_batches_of_one_process(world_dir, tmp_path):
    # Knowledge injection draws its own batches (form x modality groups, multiple-choice renderings):
    # every process draws the same global batch and trains its half (TrainConfig.shared_batches),
    # so two processes follow one process's recipe, step for step, in the same number of steps.
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(INJECT_HELPER), str(single), str(world_dir)], check=True, env=env)
    subprocess.run([accelerate, "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision",
                    "no", "--dynamo_backend", "no", str(INJECT_HELPER), str(double), str(world_dir)], check=True, env=env)
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert list(one["losses"]) == list(two["losses"]) and len(one["losses"]) == 3  # skill stage and both stages
    for stage, losses in one["losses"].items():
        assert len(losses) > 3 and len(two["losses"][stage]) == len(losses), stage
        assert two["losses"][stage] == pytest.approx(losses, rel=1e-4, abs=1e-5), stage
    # The learned check, scored half by each process, gives the same scores.
    assert two["learned"] == one["learned"]
    # ...but the two models round differently, so they are cached apart.
    assert two["key"] != one["key"]
