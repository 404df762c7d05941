"""Ship the default run's vanilla model with the package (src/mllm_unlearn/assets/vanilla/), or check
that retraining reproduces the shipped one bit for bit.

    .venv/bin/python benchmarks/ship_vanilla.py [--family F] [--from-cache DIR]   # write the asset
    .venv/bin/python benchmarks/ship_vanilla.py [--family F] --check              # retrain (~15 min), compare

Writing trains the default world's vanilla model (knowledge injection, one CPU thread) into an
empty cache, or takes the finished entry of that key from ``--from-cache``, and copies it with a
manifest (``shipped.json``: weights' SHA-256, training-data fingerprint, versions, machine).
``--check`` retrains into an empty cache with ``--no-shipped-vanilla``'s setting and prints whether
the weights' SHA-256 equals the shipped one (exit status 1 if not). Float rounding depends on the
CPU's kernels and the torch build, so another machine may train another model: the shipped one is
what every machine then evaluates.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.prepare import prepare_benchmark, prepare_vanilla, vanilla_location
from mllm_unlearn.jobs.results import versions
from mllm_unlearn.recipes.shipped import WEIGHTS, file_sha256, shipped_model, shipped_models, verify_shipped, write_shipped


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def train_default(cache_dir: str, family: str) -> tuple[Path, object, float]:
    cfg = RunConfig(family=family, cache_dir=cache_dir, shipped_vanilla=False)
    benchmark, key = prepare_benchmark(cfg)
    start = time.perf_counter()
    _, path, trained = prepare_vanilla(cfg, benchmark, key)
    return Path(path), benchmark, time.perf_counter() - start if trained else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="retrain and compare with the shipped model")
    parser.add_argument("--from-cache", help="take the trained default entry from this cache instead of training")
    parser.add_argument("--family", default="llava")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ship-vanilla-") as scratch:
        if args.check:
            cfg = RunConfig(family=args.family, cache_dir=scratch)
            name = vanilla_location(cfg, prepare_benchmark(cfg)[1]).name
            folder = shipped_model(name)
            if folder is None:
                sys.exit(f"no shipped model for the default {args.family} run ({name}); shipped: {shipped_models()}")
            expected = verify_shipped(folder)["sha256"]
            path, _, seconds = train_default(scratch, args.family)
            found = file_sha256(path / WEIGHTS)
            print(f"retrained {path.name} in {seconds:.0f} s: SHA-256 {found[:16]}..., shipped {expected[:16]}...: "
                  + ("identical" if found == expected else "DIFFERENT"))
            sys.exit(0 if found == expected else 1)
        cache = args.from_cache or scratch
        cfg = RunConfig(family=args.family, cache_dir=cache, shipped_vanilla=False)
        benchmark, key = prepare_benchmark(cfg)
        entry = vanilla_location(cfg, key)
        seconds = 0.0
        if not (entry / "injection.json").is_file():
            if args.from_cache:
                sys.exit(f"{entry} is not a finished vanilla model: train it first (mllm-unlearn run), or drop --from-cache")
            entry, benchmark, seconds = train_default(cache, args.family)
        made_by = {"command": "benchmarks/ship_vanilla.py" + (f" --family {args.family}" if args.family != "llava" else "")
                   + (f" --from-cache {args.from_cache}" if args.from_cache else ""),
                   "date": date.today().isoformat(), "machine": platform.machine(), "processor": cpu_name(),
                   "cpu_threads": 1, "versions": versions(), **({"injection_s": round(seconds)} if seconds else {})}
        target = write_shipped(entry, benchmark, made_by)
        size = sum(p.stat().st_size for p in target.iterdir())
        print(f"shipped {target} ({size / 1e6:.1f} MB; weights SHA-256 {file_sha256(target / WEIGHTS)[:16]}...)")


if __name__ == "__main__":
    main()
