"""Cost of neuron localization: MIP-Editor's batched path search, MANU's streaming statistics.

Prints, in one run on the same model and samples:

- MIP-Editor path search time (IGI on text-only forget samples, IFI on image + question forget
  samples) batched (the m Riemann steps of a sample in the batch dimension, samples batched too)
  vs a step-by-step loop (one sample, one step per forward/backward), after asserting both find
  identical paths; and the speed-up (goal: >= 5x).

- MANU peak memory of the statistics pass: streaming running sums (``collect_neuron_statistics``)
  vs storing every counted activation and reducing afterwards (what MANU's released code does),
  and whether both give the same statistics (max relative difference).

    .venv/bin/python benchmarks/localization_speed.py [--model PATH] [--benchmark DIR] [--positions all] [--samples 32]

Without --model it uses the default run's cached vanilla LLaVA under --cache-dir.

How memory is measured: each variant runs in a fresh subprocess (so neither sees the other's
freed-but-kept pages). On CPU the figure is the process's peak resident set (``ru_maxrss``):
``tracemalloc`` only sees Python's allocator, not torch's C++ tensor memory. We report the peak
after loading the model and running one warm-up forward pass of the same batch size, and the
peak after the statistics pass; the difference is what the pass adds beyond a plain forward.
On CUDA it is the allocator's ``max_memory_allocated`` over the pass (reset after warm-up).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import add_model_arguments, resolve_inputs


def _vanilla_and_benchmark(args: argparse.Namespace) -> tuple[str, str]:
    bench, model = resolve_inputs(args)
    return model, bench


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def statistics_worker(mode: str, model: str, bench: str, positions: str, batch_size: int, out: str) -> None:
    """One variant in this process: print its peak memory, save its statistics to ``out``."""
    from safetensors.torch import save_file

    from mllm_unlearn.data import load_mllmu
    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.localization.statistics import SiteStatistics, collect_neuron_statistics, stored_activations
    from mllm_unlearn.methods.base import item_batches
    from mllm_unlearn.models import load_vlm

    torch.set_num_threads(2)
    vlm = load_vlm(model, device="auto")
    benchmark = load_mllmu(bench)
    items = benchmark.forget_train + benchmark.retain_train[:len(benchmark.forget_train)]
    encoder = Encoder(vlm)
    lm, vision = vlm.adapter.lm_ffn_sites(vlm.model), vlm.adapter.vision_ffn_sites(vlm.model)
    for _ in item_batches(items, encoder, batch_size, vlm.device):  # fill the prompt cache for both alike
        pass
    with torch.no_grad():  # warm-up forward on the largest batch shape
        batch = next(item_batches(items, encoder, batch_size, vlm.device))
        vlm.model(**{k: v for k, v in batch.items() if k != "labels"})
    cuda = vlm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _peak_rss_mb()
    start = time.perf_counter()
    batches = item_batches(items, encoder, batch_size, vlm.device)
    if mode == "streaming":
        stats = collect_neuron_statistics(vlm.model, batches, lm, vision, positions)
    else:
        stored = stored_activations(vlm.model, batches, lm, vision, positions)
        stats = {name: SiteStatistics.from_activations(acts, 0.1) for name, acts in stored.items()}
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    tensors = {f"{name}.{field}": getattr(s, field).contiguous()
               for name, s in stats.items() for field in ("abs_mean", "frequency", "mean", "variance", "rms")}
    save_file(tensors, out)
    print(json.dumps({"mode": mode, "items": len(items), "positions_counted": {n: s.count for n, s in stats.items()},
                      "baseline_mb": base, "peak_mb": peak, "seconds": elapsed, "device": str(vlm.device)}))


def manu_statistics_memory(args: argparse.Namespace) -> None:
    """MANU: peak memory of streaming statistics vs stored activations, and agreement of the two."""
    from safetensors.torch import load_file

    model, bench = _vanilla_and_benchmark(args)
    results, files = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("streaming", "stored"):
            files[mode] = str(Path(tmp) / f"{mode}.safetensors")
            command = [sys.executable, __file__, "--worker", mode, "--model", model, "--benchmark", bench,
                       "--positions", args.positions, "--batch-size", str(args.batch_size), "--out", files[mode]]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{mode} worker failed:\n{done.stderr[-3000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        streaming, stored = load_file(files["streaming"]), load_file(files["stored"])
    worst = max(float(((streaming[k] - stored[k]).abs() / stored[k].abs().clamp_min(1e-6)).max()) for k in streaming)
    counts_equal = results["streaming"]["positions_counted"] == results["stored"]["positions_counted"]
    s, d = results["streaming"], results["stored"]
    unit = "CUDA allocated" if s["device"].startswith("cuda") else "peak RSS"
    print(f"model: {model}")
    print(f"MANU statistics over {s['items']} items (positions={args.positions}, batch {args.batch_size}), "
          f"{sum(s['positions_counted'].values())} site-positions, device {s['device']}")
    for name, r in (("streaming sums", s), ("stored activations", d)):
        print(f"  {name:>19}: {unit} {r['baseline_mb']:8.1f} MB before -> {r['peak_mb']:8.1f} MB peak "
              f"(+{r['peak_mb'] - r['baseline_mb']:.1f} MB), {r['seconds']:.1f} s")
    added_stream = max(s["peak_mb"] - s["baseline_mb"], 0.1)
    print(f"  extra memory of stored over streaming: {(d['peak_mb'] - d['baseline_mb']) / added_stream:.0f}x")
    print(f"  same statistics: counts {'equal' if counts_equal else 'DIFFER'}, "
          f"max relative difference {worst:.2e} ({'OK' if counts_equal and worst < 1e-4 else 'MISMATCH'})")


def path_search_speed(model_path: str, bench: str, samples: int = 32, steps: int = 4, top_k: int = 5,
                      batch_size: int = 16) -> dict[str, Any]:
    """Times batched and step-by-step path search on the same samples; raises if their paths differ."""
    from mllm_unlearn.data import load_mllmu
    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.localization.paths import PathSearchConfig, search_paths, text_path_task, visual_path_task
    from mllm_unlearn.models import load_vlm

    torch.set_num_threads(2)
    vlm, benchmark = load_vlm(model_path, device="auto"), load_mllmu(bench)
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


def print_path_search_speed(args: argparse.Namespace) -> None:
    model, bench = _vanilla_and_benchmark(args)
    r = path_search_speed(model, bench, args.samples, args.steps, batch_size=16)
    print(f"MIP-Editor path search (IGI on text + IFI on images), {r['samples']} forget samples, m={r['steps']}, "
          f"k={r['top_k']}: identical paths ({r['path_neurons']} path neurons)")
    print(f"  batched:      {r['batched_s']:.2f} s")
    print(f"  step by step: {r['step_by_step_s']:.2f} s")
    print(f"  speed-up: {r['speedup']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, placement=False)  # the memory workers run as the measurements were made
    parser.add_argument("--positions", default="all", help="MANU positions option: all, answer or last")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=32, help="MIP-Editor: forget samples per modality")
    parser.add_argument("--steps", type=int, default=4, help="MIP-Editor: Riemann steps m")
    parser.add_argument("--only", choices=("paths", "statistics"), help="run one of the two measurements")
    parser.add_argument("--worker", choices=("streaming", "stored"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        statistics_worker(args.worker, args.model, args.benchmark, args.positions, args.batch_size, args.out)
        return
    if args.only != "statistics":
        print_path_search_speed(args)
    if args.only != "paths":
        manu_statistics_memory(args)


if __name__ == "__main__":
    main()
