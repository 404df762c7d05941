"""What the evaluation cache saves a second run: wall time of `mllm-unlearn run` (default settings
otherwise) with the vanilla figures computed, then read back.

Three runs on the same vanilla model and benchmark, one after another, in a temporary runs folder:
1. ``--method FIRST --no-eval-cache``: the first run of a session (vanilla figures computed, cached);
2. ``--method SECOND``: a second run of another method (vanilla figures read back);
3. ``--method SECOND --no-eval-cache``: the same run computing them again (the like-for-like baseline).
Prints each run's wall time (the whole process, model loading included) and its evaluation stages'
seconds from results.json, the ratios 2/1 (the issue's figure: the second method's own unlearning
time is in it) and 2/3 (what the cache alone saves), and whether runs 2 and 3 have the same figures.

    .venv/bin/python benchmarks/eval_cache_speedup.py [--first mllmeraser] [--second ga] [-- EXTRA RUN OPTIONS]

Time it alone on the machine (``flock -x``). The default cache dir is `make run`'s; the shipped or
cached vanilla model is used.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVALUATION_STAGES = ("knowledge check", "evaluate vanilla", "evaluate unlearned", "generalisation breakdown",
                     "membership inference")


def timed_run(name: str, method: str, runs_dir: Path, cache_dir: str, extra: list[str], cached: bool) -> tuple[float, dict]:
    command = [sys.executable, "-m", "mllm_unlearn", "run", "--name", name, "--method", method, "--runs-dir",
               str(runs_dir), "--cache-dir", cache_dir, "--quiet", *([] if cached else ["--no-eval-cache"]), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((runs_dir / name / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", default="mllmeraser", help="the first run's method (default: run's default)")
    parser.add_argument("--second", default="ga", help="the second run's method")
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("extra", nargs="*", help="more `run` options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        rows = [("1. first run, " + args.first + ", figures computed",
                 *timed_run("first", args.first, runs, args.cache_dir, args.extra, cached=False)),
                ("2. second run, " + args.second + ", figures read back",
                 *timed_run("second", args.second, runs, args.cache_dir, args.extra, cached=True)),
                ("3. second run, " + args.second + ", --no-eval-cache",
                 *timed_run("baseline", args.second, runs, args.cache_dir, args.extra, cached=False))]
    print(f"{'run':<48} {'wall s':>8}  evaluation stages (s)")
    for label, seconds, results in rows:
        stages = results["cost"]["wall_time_s"]
        parts = ", ".join(f"{k} {stages[k]:.1f}" for k in EVALUATION_STAGES if k in stages)
        print(f"{label:<48} {seconds:>8.1f}  {parts}; reused: {results['vanilla_eval_cache']['reused']}")
    first, second, baseline = (row[1] for row in rows)
    same = all(rows[1][2][k] == rows[2][2][k] for k in ("vanilla", "unlearned", "generalisation"))
    same = same and rows[1][2]["robustness"]["mia"] == rows[2][2]["robustness"]["mia"]
    print(f"second run / first run: {second / first:.2f}  (issue 37's target <= 0.50)")
    print(f"second run with the cache / without it: {second / baseline:.2f}")
    print(f"the second run's figures with and without the cache are identical: {same}")


if __name__ == "__main__":
    main()
