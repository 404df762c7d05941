"""How often a process aborts at exit after FSDP2-sharded training (docs/known-issues.md#fsdp2-exit-abort).

Runs the two-process test helper (tests/training/fsdp_edit.py under torchrun, gloo on CPU) N times
and prints how many runs failed, and how many of those were an abort at exit (SIGABRT, "terminate
called without an active exception") after the helper had written its results:

    flock -s /work/cpu.lock python benchmarks/fsdp_exit_aborts.py            # 50 runs, GA/GradDiff/KL
    python benchmarks/fsdp_exit_aborts.py --runs 16 --methods ga,graddiff,kl,npo,rmu,mip-editor
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "training" / "fsdp_edit.py"
ABORT_SIGNS = ("terminate called", "SIGABRT", "Signal 6", "exitcode  : -6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="two-process runs (default 50)")
    parser.add_argument("--methods", default="ga,graddiff,kl", help="methods the helper trains sharded, comma-separated")
    parser.add_argument("--keep-logs", type=Path, help="write each failed run's output here")
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be >= 1")
    if "mmunlearner" in args.methods.split(","):
        raise SystemExit("--methods: mmunlearner reads the saliency mask of the helper's one-process run "
                         "(test_sharding.py makes it); leave it out here")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if not torchrun:
        raise SystemExit("torchrun not found (it comes with torch)")
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from tests.conftest import SMALL_WORLD

    from mllm_unlearn.data.synthetic import generate_world

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    failed = aborted = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = generate_world(Path(tmp) / "world", SMALL_WORLD)
        for run in range(1, args.runs + 1):
            out = Path(tmp) / "two.pt"
            out.unlink(missing_ok=True)
            done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(HELPER), str(out),
                                   args.methods, "4", str(world), str(Path(tmp) / "mask.safetensors"), "fsdp"],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                failed += 1
                log = done.stdout + done.stderr
                at_exit = out.is_file() and any(sign in log for sign in ABORT_SIGNS)
                aborted += at_exit
                print(f"run {run}: exit status {done.returncode}" + (" (abort at exit, results written)" if at_exit
                                                                     else ""), flush=True)
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    (args.keep_logs / f"run-{run}.log").write_text(log)
    print(f"{aborted} of {args.runs} two-process runs aborted at exit ({failed} failed in all; methods "
          f"{args.methods}; {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
