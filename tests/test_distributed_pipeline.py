"""The whole CLI job under ``accelerate launch`` with 2 processes matches 1 process with the same global batch."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mllm_unlearn.models.tiny import build_tiny_vlm
from mllm_unlearn.recipes import InjectionConfig, inject_knowledge

from .conftest import SMALL_SIZE, SMALL_WORLD


def test_two_process_cli_run_matches_one_process(benchmark, words, tmp_path):
    vanilla = build_tiny_vlm("llava", words, SMALL_SIZE, seed=0)
    inject_knowledge(vanilla, benchmark, InjectionConfig(skill_people=0, pretrain_epochs=2, finetune_epochs=3),
                     progress=False)
    vanilla.save(tmp_path / "vanilla")
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher must be installed with the package"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["run", "--model", str(tmp_path / "vanilla"), "--people", str(SMALL_WORLD.fictitious),
              "--real-people", str(SMALL_WORLD.real_world), "--method", "graddiff", "--max-steps", "3", "--tasks", "mcq",
              "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet",
              "--allow-unknown", "--attacks", "none"]  # the battery has its own tests (test_pipeline_attacks.py)
    subprocess.run([sys.executable, "-m", "mllm_unlearn", *common, "--name", "one", "--batch-size", "8"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([accelerate, "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mllm_unlearn", *common, "--name", "two",
                    "--batch-size", "4", "--no-eval-cache"],  # measured by both processes, not read back
                   check=True, env=env, stdout=subprocess.DEVNULL)
    one = json.loads((tmp_path / "runs" / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "runs" / "two" / "results.json").read_text())
    assert one["config"]["processes"] == 1 and two["config"]["processes"] == 2
    assert two["vanilla_eval_cache"]["reused"] is False
    # Evaluation is shared out over the processes and gathered back in order: identical.
    assert two["vanilla"]["predictions"] == one["vanilla"]["predictions"]
    edit_one = json.loads((tmp_path / "runs" / "one" / "edit" / "edit.json").read_text())["meta"]
    edit_two = json.loads((tmp_path / "runs" / "two" / "edit" / "edit.json").read_text())["meta"]
    assert edit_two["steps"] == edit_one["steps"] == 3
    assert edit_two["losses"] == pytest.approx(edit_one["losses"], rel=1e-4, abs=1e-5)
    for split, cells in one["unlearned"]["figures"].items():
        for modality, cell in cells.items():
            assert two["unlearned"]["figures"][split][modality]["mcq_accuracy"] == pytest.approx(
                cell["mcq_accuracy"], abs=100 / cell["mcq_count"] + 1e-9)  # at most one near-tie item apart


LEAVES_GROUP = """
import atexit, os, pathlib, sys
import torch
from mllm_unlearn.utils import init_distributed

# Registered first, so it runs last at exit (atexit is last-in, first-out): after the package's own.
report = pathlib.Path(sys.argv[1]) / f"rank{os.environ['RANK']}"
atexit.register(lambda: report.write_text(f"group left: {not torch.distributed.is_initialized()}"))
init_distributed(cpu=True)
init_distributed(cpu=True)  # a second call is harmless
total = torch.ones(1)
torch.distributed.all_reduce(total)
assert total.item() == 2.0, total
"""


def test_a_launched_process_leaves_its_process_group_before_it_exits(tmp_path):
    # Left to static destructors, gloo's threads sometimes aborted a finished process (SIGABRT,
    # "terminate called without an active exception") and the launcher failed the whole run.
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torch's launcher must be installed with torch"
    script = tmp_path / "leaves_group.py"
    script.write_text(LEAVES_GROUP)
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["group left: True"] * 2
