"""What a knowledge-injection recipe teaches, and how long it takes: the vanilla tiny model's figures.

    .venv/bin/python benchmarks/injection_quality.py [--set '{"modality_weights": {"vqa": 2, "qa": 1}}'] \
        [--world '{"validation_percent": 0}'] [--tasks mcq,cloze] [--cache-dir DIR] [--family llava]

Trains (or loads, when cached) the vanilla model of the default run with ``InjectionConfig``'s
defaults and the fields given in ``--set`` (JSON), exactly as `mllm-unlearn run` would, then prints
the steps per stage, the injection's wall time and, per split x modality, classification accuracy
(and fill-in-the-blank accuracy / generation ROUGE-L when asked), plus VQA accuracy with every
portrait swapped for another person's (the answer must come from the image: ~25% expected).

It also runs on an older checkout's package (``PYTHONPATH=CHECKOUT/src``, ``--tasks mcq``), down to
078d4ee, the recipe issue 17 was filed against: docs/knowledge-injection.md#injection-time compares
the two on the same knowledge. Such a checkout has no shipped model to skip and no validation people to drop.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from mllm_unlearn.eval import EvalConfig, Evaluator

try:
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.prepare import prepare_benchmark, prepare_vanilla
    from mllm_unlearn.recipes.inject import INJECTION_META, InjectionConfig
except ImportError:  # a checkout before the jobs/ and recipes/ layout (0.2 and older)
    from mllm_unlearn.pipeline import RunConfig, prepare_benchmark, prepare_vanilla
    from mllm_unlearn.training.inject import INJECTION_META, InjectionConfig

FIGURES = {"mcq": "mcq_accuracy", "cloze": "cloze_accuracy", "generation": "rougeL_f"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="{}", help="InjectionConfig fields as JSON, over the defaults")
    parser.add_argument("--tasks", default="mcq,cloze")
    parser.add_argument("--family", default="llava")
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", default="{}",
                        help="WorldConfig fields as JSON, over the defaults (validation_percent 0: no validation people)")
    args = parser.parse_args()

    cfg = RunConfig(family=args.family, cache_dir=args.cache_dir, seed=args.seed)
    if any(f.name == "shipped_vanilla" for f in fields(RunConfig)):  # absent from checkouts before shipping
        cfg.shipped_vanilla = False  # never the shipped vanilla model: this script measures the injection
    cfg.injection = replace(InjectionConfig(seed=args.seed), **json.loads(args.set))
    cfg.world = replace(cfg.world, **json.loads(args.world))
    benchmark, key = prepare_benchmark(cfg)
    start = time.perf_counter()
    vlm, path, trained = prepare_vanilla(cfg, benchmark, key)
    injection_s = time.perf_counter() - start
    tasks = tuple(args.tasks.split(","))
    results = Evaluator(vlm, EvalConfig(tasks=tasks, progress=False, image_swap_check=True)).evaluate(benchmark)
    history = json.loads((Path(path) / INJECTION_META).read_text())["history"]
    print(f"model: {path} ({'trained now' if trained else 'cached'}; injection {injection_s:.0f} s; "
          f"torch intra-op threads {torch.get_num_threads()}; the curriculum runs on one since 3380a54)")
    print("steps: " + ", ".join(f"{stage} {record.get('steps')}" for stage, record in history.items())
          + f" (total {sum(record.get('steps') or 0 for record in history.values())})")
    for task in tasks:
        print(f"{task} ({FIGURES[task]}), VQA / QA:")
        for split, cells in results["figures"].items():
            print(f"  {split}: " + " / ".join(f"{cells[m][FIGURES[task]]:.1f}" if task != "generation"
                                               else f"{cells[m][FIGURES[task]]:.2f}" for m in ("vqa", "qa")))
    swap = results.get("diagnostics", {}).get("image_swap", {})
    print("VQA with swapped portraits: " + ", ".join(f"{k} {v:.1f}" for k, v in swap.items()))


if __name__ == "__main__":
    main()
