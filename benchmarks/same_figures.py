"""Whether two runs measured the same: every figure of two results.json files, compared leaf by leaf.

    .venv/bin/python benchmarks/same_figures.py RUN_A RUN_B [--root-a DIR --root-b DIR]

Seconds and peak memory (``wall_time_s``, ``peak_memory_mb*``, ``seconds``) differ from run to run
and are only counted; paths under ``--root-a`` are read as under ``--root-b`` (two checkouts). Prints
every other difference and exits 1 if there is any: what a refactoring must leave unchanged for the
same seed (e.g. a run at an older checkout, ``PYTHONPATH=OLD/src``, against one at this checkout).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

VOLATILE = ("wall_time_s", "peak_memory", "seconds")


def differences(a: Any, b: Any, path: str = "", root_a: str | None = None, root_b: str | None = None) -> list[tuple]:
    """(path, a's value, b's value) for every leaf that differs; missing keys count as differences."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append((f"{path}/{key}", a.get(key, "<missing>"), b.get(key, "<missing>")))
            else:
                out += differences(a[key], b[key], f"{path}/{key}", root_a, root_b)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{k}]", root_a, root_b)]
    if isinstance(a, str) and isinstance(b, str) and root_a and root_b and a.replace(root_a, root_b) == b:
        return []
    return [] if a == b else [(path, a, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--root-a", help="a path prefix in RUN_A's results read as --root-b")
    parser.add_argument("--root-b")
    args = parser.parse_args()
    a, b = (json.loads((run / "results.json").read_text()) for run in (args.run_a, args.run_b))
    found = differences(a, b, root_a=args.root_a, root_b=args.root_b)
    volatile = [d for d in found if any(v in d[0] for v in VOLATILE)]
    other = [d for d in found if d not in volatile]
    for path, x, y in other:
        print(f"{path}: {str(x)[:80]!s} != {str(y)[:80]!s}")
    print(f"{args.run_a} vs {args.run_b}: {len(other)} differing figures or settings "
          f"({len(volatile)} timings and memory readings differ, as they do between runs)")
    sys.exit(1 if other else 0)


if __name__ == "__main__":
    main()
