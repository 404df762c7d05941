"""Every registered method on the built-in benchmark (forget 10%), one table: docs/results.md.

    .venv/bin/python benchmarks/methods_table.py [--family llava] [--methods ga,graddiff,...]

Uses the cached vanilla model of `make run` (trains it first if missing). Per method:
classification accuracy (likelihood scorer) on forget / test / retain / real-world in VQA and
QA, the unlearning wall time and the process's peak memory. Each method's full results stay
in runs/table-<method>/.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mllm_unlearn.methods import available_methods

SPLITS = ("forget", "test", "retain", "real_world")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava")
    parser.add_argument("--methods", default=",".join(available_methods()))
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args()
    rows, vanilla = [], None
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        name = f"table-{args.family}-{method}"
        # One process per method, so each peak-memory figure is that method's run alone.
        command = [sys.executable, "-m", "mllm_unlearn", "run", "--method", method, "--family", args.family,
                   "--name", name, "--tasks", "mcq", "--quiet"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        print(f"{method}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        results = json.loads((Path("runs") / name / "results.json").read_text())
        vanilla = vanilla or results["vanilla"]["figures"]
        rows.append((method, results))
    header = "| method | " + " | ".join(f"{s} VQA | {s} QA" for s in SPLITS) + " | unlearn time (s) | peak memory (MB) |"
    lines = [f"# Methods on the built-in benchmark ({args.family}, forget 10%)", "",
             "Classification accuracy (%), likelihood scorer. Produced by `benchmarks/methods_table.py`.", "",
             header, "|" + " --- |" * (2 + 2 * len(SPLITS) + 1)]
    lines.append("| vanilla | " + " | ".join(f"{vanilla[s]['vqa']['mcq_accuracy']:.1f} | {vanilla[s]['qa']['mcq_accuracy']:.1f}"
                                            for s in SPLITS) + " | | |")
    for method, results in rows:
        figures = results["unlearned"]["figures"]
        cost = results["cost"]
        unlearn_s = next(v for k, v in cost["wall_time_s"].items() if k.startswith("unlearn"))
        lines.append(f"| {method} | " + " | ".join(
            f"{figures[s]['vqa']['mcq_accuracy']:.1f} | {figures[s]['qa']['mcq_accuracy']:.1f}" for s in SPLITS)
            + f" | {unlearn_s:.1f} | {cost['peak_memory_mb']:.0f} |")
    lines += ["", "Peak memory: the method's whole run (load, evaluate twice, unlearn) in its own process: "
              "max RSS on CPU, the CUDA allocator's peak on GPU."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
