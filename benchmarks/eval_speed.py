"""Classification scoring speed: MLLMU-Bench's `generate` scorer vs our batched `likelihood` scorer.

Prints both scorers' wall time on the same model and items, the ratio, and both accuracies
(they must agree within 2 points on the vanilla model).

    .venv/bin/python benchmarks/eval_speed.py [--model PATH] [--generate-batch 1]

Without --model it uses the cached vanilla model of `make run` (run that first).
MLLMU-Bench generates one item at a time with max_new_tokens=50; --generate-batch 1
reproduces that, a larger value gives batched generation.
"""
from __future__ import annotations

import argparse
import time

import torch

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.eval import EvalConfig, Evaluator
from mllm_unlearn.models import load_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the default run's cached vanilla LLaVA)")
    parser.add_argument("--benchmark", help="MLLMU-Bench directory (default: the cached built-in world)")
    parser.add_argument("--split", default="forget")
    parser.add_argument("--generate-batch", type=int, default=1)
    parser.add_argument("--likelihood-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from mllm_unlearn.pipeline import resolve_default_inputs

    try:
        bench_dir, model = resolve_default_inputs(args.model, args.benchmark)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    vlm = load_vlm(model, device="auto")
    benchmark = load_mllmu(bench_dir)
    items = [i for i in benchmark.eval_splits[args.split] if i.task == "mcq"]

    def timed(scorer: str, batch: int) -> tuple[float, float]:
        evaluator = Evaluator(vlm, EvalConfig(scorer=scorer, batch_size=batch, max_new_tokens=args.max_new_tokens,
                                              progress=False))
        evaluator.score_group(items[:2], "mcq")  # warm-up (and prompt cache, for both alike)
        start = time.perf_counter()
        records = evaluator.score_group(items, "mcq")
        elapsed = time.perf_counter() - start
        return elapsed, 100.0 * sum(r["correct"] for r in records) / len(records)

    like_time, like_acc = timed("likelihood", args.likelihood_batch)
    gen_time, gen_acc = timed("generate", args.generate_batch)
    print(f"model: {model}")
    print(f"items: {len(items)} classification questions of split '{args.split}' (VQA + QA)")
    print(f"likelihood scorer: {like_time:.2f} s, accuracy {like_acc:.1f}%")
    print(f"generate scorer (batch {args.generate_batch}, max_new_tokens {args.max_new_tokens}): "
          f"{gen_time:.2f} s, accuracy {gen_acc:.1f}%")
    print(f"speed-up of likelihood over generate: {gen_time / like_time:.1f}x")
    print(f"accuracy difference: {abs(gen_acc - like_acc):.1f} points")


if __name__ == "__main__":
    main()
