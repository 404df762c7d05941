"""How soon the knowledge check stops a run on a model that does not know the forget people: the
check's own evaluation (the forget split's classification questions alone) against a full vanilla
evaluation, on the same model and benchmark.

The model is the default run's architecture with random weights (it knows nobody), its tokenizer
built for the benchmark; the benchmark is the default built-in world (generated into --cache-dir
if missing). Prints the seconds of `mllm-unlearn run` until it stops (model saved to a temporary
folder and loaded by the run, no evaluation cache), of the check's evaluation and of a full vanilla
evaluation (default settings: every split, task and the image-swap diagnostic), and the ratios.

    .venv/bin/python benchmarks/knowledge_check_cost.py [--cache-dir .cache/mllm_unlearn]

Time it alone on the machine (``flock -x``).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from mllm_unlearn.eval import EvalConfig, Evaluator
from mllm_unlearn.eval.knowledge import KnowledgeCheckFailed, forget_evaluation, knowledge_check
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.prepare import build_tiny_base, prepare_benchmark
from mllm_unlearn.jobs.run import run_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig(cache_dir=args.cache_dir, device="cpu", progress=False, eval_cache=False,
                    eval=EvalConfig(progress=False))
    benchmark, _ = prepare_benchmark(cfg)
    vlm = build_tiny_base(cfg, benchmark)  # random weights: knows nobody
    with tempfile.TemporaryDirectory() as tmp:
        vlm.save(f"{tmp}/model")
        run = replace(cfg, model=f"{tmp}/model", runs_dir=f"{tmp}/runs", cache_dir=f"{tmp}/cache")
        start = time.perf_counter()
        try:
            run_pipeline(run)
            raise SystemExit("the run did not stop: the random model passed the knowledge check")
        except KnowledgeCheckFailed:
            stopped = time.perf_counter() - start
    evaluator = Evaluator(vlm, replace(cfg.eval, image_swap_check=True))
    start = time.perf_counter()
    forget = forget_evaluation(evaluator, benchmark, ("vqa", "qa"))
    check = time.perf_counter() - start
    record = knowledge_check(forget, benchmark.protocol, ("vqa", "qa"))
    start = time.perf_counter()
    evaluator.evaluate(benchmark)
    full = time.perf_counter() - start
    items = sum(len(s) for s in benchmark.eval_splits.values())
    print(f"benchmark: default built-in world, {items} evaluation items; the check read "
          f"{sum(c['items'] for c in record['modalities'].values())} (passed: {record['passed']})")
    print(f"run until the knowledge check stopped it (process work after loading the benchmark): {stopped:.1f} s")
    print(f"the check's evaluation (forget split, classification, VQA + QA): {check:.2f} s")
    print(f"a full vanilla evaluation (every split and task, image-swap diagnostic): {full:.1f} s")
    print(f"check / full evaluation: {check / full:.3f}; stopped run / full evaluation: {stopped / full:.3f} "
          "(issue 37's target < 0.10)")


if __name__ == "__main__":
    main()
