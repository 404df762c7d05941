"""The whole CLI job, sharded with FSDP2 by ``accelerate launch --use_fsdp`` on 2 CPU processes, completes."""
import json
import os
import shutil
import subprocess
import sys

from .conftest import SMALL_WORLD


# Retain items are paired by modality, so one process's step can hold no image while another's
# does: the root group's vision parameters must still get a (zero) gradient everywhere.
def test_accelerate_fsdp_launch_runs_the_cli_sharded_and_writes_the_report(tiny_vlm, tmp_path):
    tiny_vlm("llava").save(tmp_path / "vanilla")  # no knowledge needed: this checks the machinery
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "accelerate's launcher must be installed with the package"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # --use_fsdp: accelerate's FSDP plugin would refuse this CPU machine; the tool claims the flag
    # and shards with FSDP2 itself (the same as --multi_gpu ... --shard fsdp).
    subprocess.run([accelerate, "launch", "--main_process_port", "0", "--use_fsdp", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mllm_unlearn", "run",
                    "--model", str(tmp_path / "vanilla"), "--people", str(SMALL_WORLD.fictitious),
                    "--real-people", str(SMALL_WORLD.real_world), "--method", "graddiff", "--max-steps", "2",
                    "--batch-size", "4", "--tasks", "mcq", "--no-mia", "--no-relearn", "--device", "cpu",
                    "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet",
                    "--allow-unknown", "--name", "sharded"], check=True, env=env, stdout=subprocess.DEVNULL)
    run = tmp_path / "runs" / "sharded"
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["processes"] == 2 and results["config"]["method_config"]["shard"] == "fsdp"
    edit = json.loads((run / "edit" / "edit.json").read_text())["meta"]
    assert edit["steps"] == 2 and len(edit["losses"]) == 2
    assert "graddiff" in (run / "report.md").read_text()
    assert results["unlearned"]["figures"]  # evaluated after unlearning
