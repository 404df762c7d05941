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
    subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", str(HELPER), str(double), "4", str(world_dir)], check=True, env=env)
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert len(one) == len(two) == 6
    # Same samples per global step, gradients averaged over the two halves, schedule stepped
    # once per step: the curves agree to float precision (not just at the first step).
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
