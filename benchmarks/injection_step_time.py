"""Where a knowledge-injection step's time goes, on one CPU thread: prompt rendering and encoding,
forward with the loss, backward, and the AdamW step (torch's default kernel and the fused one).

    .venv/bin/python benchmarks/injection_step_time.py [--batch-sizes 8,16,32] [--steps 40] [--cache-dir DIR]

Batches are those of the default world's stage 2 (multiple choice on portraits, the slowest form,
and open QA), drawn and encoded as the curriculum does. Prints milliseconds per step (median of
``--steps`` after 5 warm-up steps). Timings move by 20% or more with the machine's other load:
run it alone.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from mllm_unlearn.data.collate import Encoder, collate
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.prepare import benchmark_texts, prepare_benchmark
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
from mllm_unlearn.recipes.inject import McqRenderer
from mllm_unlearn.training.losses import sequence_nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (the curriculum's own count: training/inject.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = RunConfig(cache_dir=args.cache_dir, progress=False)
    benchmark, _ = prepare_benchmark(cfg)
    items = list(benchmark.finetune_train)
    renderer = McqRenderer(items, seed=0)
    groups = {"mcq/vqa": [i for i in items if i.modality == "vqa" and renderer.renderable(i)],
              "qa/qa": [i for i in items if i.modality == "qa"]}
    words = words_of(benchmark_texts(benchmark))
    print("| batch | form | encode | forward + loss | backward | AdamW | fused AdamW | step (default AdamW) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for group, pool in groups.items():
            vlm = build_tiny_vlm("llava", words, cfg.size, seed=0)
            encoder = Encoder(vlm, cache_size=0)  # rendered prompts are new every time
            rng = random.Random(0)
            optimizers = {fused: torch.optim.AdamW(vlm.model.parameters(), lr=1e-4, fused=fused) for fused in (False, True)}
            times: dict[str, list[float]] = {k: [] for k in ("encode", "forward", "backward", "adamw", "fused")}
            for step in range(args.steps + 5):
                clock = time.perf_counter()
                drawn = rng.sample(pool, batch_size)
                rendered = [renderer(i) for i in drawn] if group.startswith("mcq") else drawn
                examples = [encoder.training_example(i, p) for i, p in zip(rendered, encoder.prompts(rendered))]
                batch = collate(examples, encoder.pad_id)
                marks = [time.perf_counter()]
                loss = sequence_nll(vlm.model, batch).mean()
                marks.append(time.perf_counter())
                loss.backward()
                marks.append(time.perf_counter())
                fused = step % 2 == 1  # alternate the two kernels on the same kind of step
                optimizers[fused].step()
                marks.append(time.perf_counter())
                vlm.model.zero_grad(set_to_none=True)
                if step >= 5:
                    times["encode"].append(marks[0] - clock)
                    times["forward"].append(marks[1] - marks[0])
                    times["backward"].append(marks[2] - marks[1])
                    times["fused" if fused else "adamw"].append(marks[3] - marks[2])
            ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
            total = ms["encode"] + ms["forward"] + ms["backward"] + ms["adamw"]
            print(f"| {batch_size} | {group} | {ms['encode']:.1f} | {ms['forward']:.1f} | {ms['backward']:.1f} | "
                  f"{ms['adamw']:.1f} | {ms['fused']:.1f} | {total:.1f} |", flush=True)


if __name__ == "__main__":
    main()
