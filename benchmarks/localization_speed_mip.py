"""MIP-Editor path search speed: batched Riemann steps vs a step-by-step loop (same paths).

Runs IGI (language-model FFNs, text-only forget samples) and IFI (vision FFNs, image + question
forget samples) on the same model and samples twice: batched (the m steps of a sample in the batch
dimension, samples batched too) and one sample and one step per forward/backward. Asserts that
both find identical paths, then prints both times and the speed-up (goal: >= 5x).

    PYTHONPATH=src .venv/bin/python benchmarks/localization_speed_mip.py [--cache-dir DIR] [--samples 32]

Uses the cached vanilla model of the default built-in world (LLaVA); build it first with `make run`.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.localization.paths import PathSearchConfig, search_paths, text_path_task, visual_path_task
from mllm_unlearn.pipeline import RunConfig, prepare_benchmark, prepare_vanilla


def path_search_speed(cache_dir: str = ".cache/mllm_unlearn", samples: int = 32, steps: int = 4, top_k: int = 5,
                      batch_size: int = 16) -> dict[str, Any]:
    """Times batched and step-by-step path search on the same samples; raises if their paths differ."""
    cfg = RunConfig(cache_dir=cache_dir, progress=False)
    benchmark, key = prepare_benchmark(cfg)
    vlm, model_path, trained = prepare_vanilla(cfg, benchmark, key)
    if trained:
        print(f"(trained a vanilla model into {model_path} first)")
    encoder = Encoder(vlm)
    text = [i for i in benchmark.forget_train if i.modality == "qa"][:samples]
    images = [i for i in benchmark.forget_train if i.modality == "vqa"][:samples]
    searches = [("IGI", text, vlm.adapter.lm_ffn_sites(vlm.model), text_path_task(vlm, encoder), "ig"),
                ("IFI", images, vlm.adapter.vision_ffn_sites(vlm.model), visual_path_task(vlm, encoder), "fisher")]
    encoder.batch(text + images, train=True)  # prompts into the encoder's cache, for both runs alike
    timings = {"batched": 0.0, "step_by_step": 0.0}
    neurons = 0
    for label, items, sites, task, score in searches:
        paths = [s.module_path for s in sites]
        search_cfg = PathSearchConfig(steps=steps, top_k=top_k, score=score, batch_size=batch_size)
        search_paths(vlm.model, paths, items[:2], task, search_cfg)  # warm-up
        results = {}
        for mode in ("batched", "step_by_step"):
            start = time.perf_counter()
            results[mode] = search_paths(vlm.model, paths, items, task, search_cfg, step_by_step=mode == "step_by_step")
            timings[mode] += time.perf_counter() - start
        a, b = results["batched"], results["step_by_step"]
        same = [[t.tolist() for t in s] for s in a.neurons] == [[t.tolist() for t in s] for s in b.neurons]
        assert same, f"{label}: batched and step-by-step path search found different paths"
        neurons += sum(len(v) for v in a.union().values())
    return {"model": model_path, "samples": len(text) + len(images), "steps": steps, "top_k": top_k,
            "batched_s": timings["batched"], "step_by_step_s": timings["step_by_step"],
            "speedup": timings["step_by_step"] / timings["batched"], "path_neurons": neurons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--samples", type=int, default=32, help="forget samples per modality")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    r = path_search_speed(args.cache_dir, args.samples, args.steps, batch_size=args.batch_size)
    print(f"model: {r['model']}")
    print(f"path search (IGI on text + IFI on images), {r['samples']} forget samples, m={r['steps']}, k={r['top_k']}: "
          f"identical paths ({r['path_neurons']} path neurons)")
    print(f"batched:      {r['batched_s']:.2f} s")
    print(f"step by step: {r['step_by_step_s']:.2f} s")
    print(f"speed-up: {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
