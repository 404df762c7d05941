"""Classification scoring speed: MLLMU-Bench's `generate` scorer vs our batched `likelihood` scorer.

Prints both scorers' wall time on the same model and items, the ratio, and both accuracies
(they must agree within 2 points on the vanilla model). Each time is the median of
--repeats passes, each with a fresh evaluator, so prompt encoding is timed every pass.

    .venv/bin/python benchmarks/eval_speed.py [--model PATH] [--split retain] [--dtype bfloat16]

Without --model it uses the cached vanilla model of `make run` (run that first).
MLLMU-Bench generates one item at a time with max_new_tokens=50; --generate-batch 1
reproduces that, a larger value gives batched generation. --dtype loads the weights in that
dtype for both scorers (on a CPU with AVX-512 BF16, bfloat16 matrix products are several
times faster than float32 ones).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import add_model_arguments, load_model, resolve_inputs
from mllm_unlearn.data import load_mllmu
from mllm_unlearn.eval import EvalConfig, Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--split", default="forget", choices=("forget", "test", "retain", "real_world"))
    parser.add_argument("--generate-batch", type=int, default=1)
    parser.add_argument("--likelihood-batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per scorer; the median is printed")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    bench_dir, model = resolve_inputs(args)
    vlm = load_model(args, model)  # both scorers run this one model, in --dtype
    benchmark = load_mllmu(bench_dir)
    items = [i for i in benchmark.eval_splits[args.split] if i.task == "mcq"]

    def timed(scorer: str, batch: int) -> tuple[float, float]:
        times, accuracies = [], set()
        for _ in range(args.repeats):
            evaluator = Evaluator(vlm, EvalConfig(scorer=scorer, batch_size=batch, max_new_tokens=args.max_new_tokens,
                                                  progress=False))
            evaluator.score_group(items[:2], "mcq")  # warm-up (and prompt cache, for both alike)
            if vlm.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            records = evaluator.score_group(items, "mcq")
            if vlm.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            accuracies.add(100.0 * sum(r["correct"] for r in records) / len(records))
        if len(accuracies) > 1:
            raise SystemExit(f"{scorer} scorer gave different accuracies across passes: {sorted(accuracies)}")
        return statistics.median(times), accuracies.pop()

    like_time, like_acc = timed("likelihood", args.likelihood_batch)
    gen_time, gen_acc = timed("generate", args.generate_batch)
    print(f"model: {model} ({args.dtype} on {vlm.device}, {torch.get_num_threads()} CPU threads)")
    print(f"items: {len(items)} classification questions of split '{args.split}' (VQA + QA)")
    print(f"times: median of {args.repeats} passes each")
    print(f"likelihood scorer (batch {args.likelihood_batch}): {like_time:.2f} s, accuracy {like_acc:.1f}%")
    print(f"generate scorer (batch {args.generate_batch}, max_new_tokens {args.max_new_tokens}): "
          f"{gen_time:.2f} s, accuracy {gen_acc:.1f}%")
    print(f"speed-up of likelihood over generate: {gen_time / like_time:.1f}x")
    print(f"accuracy difference: {abs(gen_acc - like_acc):.1f} points")


if __name__ == "__main__":
    main()
