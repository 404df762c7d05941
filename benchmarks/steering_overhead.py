"""Prefill cost of MLLMEraser's steering edit: time with vs without the hooks, and the matrices' memory.

Prints the median prefill time (one forward over a batch of classification prompts, as the
likelihood scorer runs it) without and with a steering edit on every LM layer, the relative
overhead (goal ≤ 10%), and the extra memory of the steering matrices in bytes and as a share
of the model's parameter bytes.

    .venv/bin/python benchmarks/steering_overhead.py [--model PATH] [--edit RUN/edit] [--repeats 20]

Without --model it uses the default run's cached vanilla LLaVA (``--cache-dir``); without one there,
a freshly built tiny LLaVA of the default size. Without --edit the matrices are random (the
cost does not depend on their values), one per LM layer but the first (the default layers).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import add_model_arguments, load_model
from mllm_unlearn.data import WorldConfig, generate_world, load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import Steering, load_edit
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.models import TinySize
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, benchmark=False)  # no cached model: a fresh tiny one on a small world
    parser.add_argument("--edit", help="a saved steering edit (default: random matrices)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mllm_unlearn.jobs.prepare import default_cached_model

    bench_dir, default_model = default_cached_model(args.cache_dir)
    if not args.model and not default_model.is_dir() and args.dtype != "float32":
        raise SystemExit("--dtype applies to a saved model (--model, or the cached default); the fresh tiny one is float32")
    if bench_dir.is_dir():
        benchmark = load_mllmu(bench_dir)
    else:
        import tempfile

        benchmark = load_mllmu(generate_world(tempfile.mkdtemp() + "/world", WorldConfig(fictitious=20, real_world=4)))
    model = args.model or (str(default_model) if default_model.is_dir() else None)
    vlm = load_model(args, model) if model else build_tiny_vlm(
        "llava", words_of(benchmark_texts(benchmark)), TinySize(), seed=0, device=args.device)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:args.batch]
    batch = {k: v.to(vlm.device) for k, v in Encoder(vlm).batch(items, train=False).items()}

    layers = vlm.adapter.lm_layers(vlm.model)
    hidden = layers[0].input_layernorm.weight.shape[0]
    if args.edit:
        edit = load_edit(args.edit)
    else:
        generator = torch.Generator().manual_seed(0)
        edit = Steering({k: torch.randn(hidden, hidden, generator=generator) / hidden for k in range(1, len(layers))},
                        strength=1.0)

    def prefill_seconds() -> float:
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            vlm.model(**batch, logits_to_keep=1)
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def median_time() -> float:
        for _ in range(args.warmup):
            prefill_seconds()
        return statistics.median(prefill_seconds() for _ in range(args.repeats))

    # Interleaved rounds, so load from other processes hits both alike.
    plain_times, steered_times = [], []
    for _ in range(3):
        plain_times.append(median_time())
        with edit.applied(vlm):
            steered_times.append(median_time())
    plain, steered = statistics.median(plain_times), statistics.median(steered_times)
    param_bytes = sum(p.numel() * p.element_size() for p in vlm.model.parameters())
    stored = edit.extra_bytes
    on_device = edit.applied_bytes(next(vlm.model.parameters()).element_size())
    print(f"model: {model or 'fresh tiny llava (default size)'} ({sum(p.numel() for p in vlm.model.parameters()):,} "
          f"parameters, LM hidden {hidden}, {len(layers)} LM layers), device {vlm.device}")
    print(f"batch: {len(items)} classification prompts, {batch['input_ids'].shape[1]} tokens; "
          f"{args.warmup} warm-up + {args.repeats} timed prefills, median of 3 interleaved rounds")
    print(f"prefill without edit: {plain * 1000:.2f} ms")
    print(f"prefill with steering on {len(edit.layers)} layers: {steered * 1000:.2f} ms")
    print(f"overhead: {100 * (steered / plain - 1):+.1f}% (goal <= 10%)")
    print(f"steering matrices: {stored:,} bytes stored ({edit.dtype}), "
          f"{on_device:,} bytes on the model's device = {100 * on_device / param_bytes:.2f}% of the model's "
          f"{param_bytes:,} parameter bytes")


if __name__ == "__main__":
    main()
