"""The vanilla evaluation of a real-size-shaped LLaVA, this version against an older one (e.g.
a00520d), on the same machine, model and benchmark: wall time and whether the figures are the same.

The model: LLaVA with a CLIP ViT-L/14-336-shaped vision tower (1024 wide, 24 layers, 16 heads,
336-pixel images in 14-pixel patches: 576 image tokens) and a small Llama decoder (--lm-hidden,
--lm-layers), random init, bf16; the benchmark: a small built-in world (--people fictitious people,
of whom the forget people, --retain-people retain people and one real-world person are evaluated;
five questions per portrait and task). What is timed is the vanilla model's
evaluation as `run` does it: every split's classification questions (likelihood scorer), the
image-swap diagnostic and the generalisation breakdown. Three measurements:

- ``old``: the older version's code (``--old-src``, e.g. a worktree of a00520d: `git worktree add
  /work/base a00520d`, then ``--old-src /work/base/src``);
- ``new``: this version, computing everything (each portrait's prefix run once, eval/prefix.py);
- ``new, cached``: this version as a second run has it, the figures read back from the evaluation
  cache (eval/cache.py) that the ``new`` pass wrote.

    .venv/bin/python benchmarks/eval_real_size.py --old-src /work/base/src [--people 6] [--workdir DIR]

Time it alone on the machine (``flock -x``). ``--measure DIR`` is the per-version step it runs in a
subprocess with that version's sources first on the path.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def prepare(workdir: Path, people: int, lm_hidden: int, lm_layers: int, vision_layers: int) -> None:
    """The world and the model, written once by this version (both versions read them)."""
    from mllm_unlearn.data import WorldConfig, generate_world, load_mllmu
    from mllm_unlearn.jobs.prepare import benchmark_texts
    from mllm_unlearn.models import TinySize
    from mllm_unlearn.models.tiny import build_tiny_vlm, words_of

    world = generate_world(workdir / "world", WorldConfig(fictitious=people, real_world=1, seed=0, validation_percent=0))
    size = TinySize(hidden=lm_hidden, layers=lm_layers, heads=max(1, lm_hidden // 64), ffn=lm_hidden * 4,
                    vision_hidden=1024, vision_layers=vision_layers, vision_heads=16, vision_ffn=4096, image_size=336,
                    image_grid=24, max_positions=2048)
    vlm = build_tiny_vlm("llava", words_of(benchmark_texts(load_mllmu(world, forget_percent=10))), size)
    vlm.model.to(dtype=__import__("torch").bfloat16)
    vlm.save(workdir / "model")


def measure(workdir: Path, threads: int, retain_people: int) -> dict:
    """The vanilla evaluation with whichever mllm_unlearn is first on the path."""
    import torch

    from mllm_unlearn.data import load_mllmu
    from mllm_unlearn.eval import EvalConfig, Evaluator
    from mllm_unlearn.eval.generalisation import generalisation_breakdown
    from mllm_unlearn.models import load_vlm

    torch.set_num_threads(threads)
    from dataclasses import replace

    benchmark = load_mllmu(workdir / "world", forget_percent=10)
    # The forget people, the first --retain-people retain people and the first real-world person: a
    # few minutes of evaluation (every question about each of them is kept, five per portrait and task).
    kept = set(benchmark.forget_ids)
    for split, count in (("retain", retain_people), ("real_world", 1)):
        kept |= set(sorted({i.person_id for i in benchmark.eval_splits[split]})[:count])
    benchmark = replace(benchmark, eval_splits={name: [i for i in items if i.person_id in kept]
                                                for name, items in benchmark.eval_splits.items()})
    vlm = load_vlm(str(workdir / "model"), "cpu", "bfloat16")
    cfg = EvalConfig(tasks=("mcq",), image_swap_check=True, batch_size=16, progress=False)

    def evaluate() -> dict:
        evaluator = Evaluator(vlm, cfg)
        return {"evaluation": evaluator.evaluate(benchmark), "generalisation": generalisation_breakdown(evaluator, benchmark)}

    out: dict = {}
    try:  # this version: the same evaluation through the evaluation cache, computed, then read back
        from mllm_unlearn.eval.cache import EvalCache, folder_content_hash
        from mllm_unlearn.jobs.vanilla_figures import cached_evaluation, cached_generalisation
    except ImportError:
        EvalCache = None  # an older version: no cache
    start = time.perf_counter()
    figures = evaluate()
    out["seconds"] = time.perf_counter() - start
    if EvalCache is not None:
        root = workdir / "cache"
        key = {"content": folder_content_hash(workdir / "model", root), "dtype": str(vlm.dtype), "device": "cpu"}
        for label in ("write", "read"):
            cache = EvalCache(root, key, reuse=label == "read")
            evaluator = Evaluator(vlm, cfg)
            start = time.perf_counter()
            cached = {"evaluation": cached_evaluation(cache, evaluator, benchmark),
                      "generalisation": cached_generalisation(cache, evaluator, benchmark)}
            out[f"cache_{label}_seconds"] = time.perf_counter() - start
            out[f"cache_{label}_reused"] = all(p["reused"] for p in cache.parts.values())
        out["cached_same"] = json.loads(json.dumps(figures, default=str)) == cached
    out["figures"] = {"figures": figures["evaluation"]["figures"], "diagnostics": figures["evaluation"].get("diagnostics"),
                      "generalisation": figures["generalisation"],
                      "predictions": [r["prediction"] for r in figures["evaluation"]["predictions"]]}
    out["prompts"] = len(figures["evaluation"]["predictions"])
    return out


def run_version(src: Path, workdir: Path, threads: int, retain_people: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, __file__, "--measure", str(workdir), "--threads", str(threads),
                           "--retain-people", str(retain_people)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"measuring with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", help="the older version's src folder (e.g. /work/base/src)")
    parser.add_argument("--people", type=int, default=20, help="fictitious people of the built-in world (>= 20)")
    parser.add_argument("--retain-people", type=int, default=1, help="retain people evaluated (with the forget ones)")
    parser.add_argument("--lm-hidden", type=int, default=512)
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=24, help="CLIP ViT-L has 24 (fewer: a quick check)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="where the model and world go (default: a temporary folder)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.threads, args.retain_people)))
        return
    if not args.old_src or not (Path(args.old_src) / "mllm_unlearn").is_dir():
        raise SystemExit("--old-src must be the src folder of the older version (e.g. a worktree of a00520d)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        if not (workdir / "model").is_dir():
            prepare(workdir, args.people, args.lm_hidden, args.lm_layers, args.vision_layers)
        old = run_version(Path(args.old_src), workdir, args.threads, args.retain_people)
        new = run_version(SRC, workdir, args.threads, args.retain_people)
    print(f"model: LLaVA, CLIP ViT-L/14-336-shaped tower ({args.vision_layers} layers), Llama {args.lm_layers} x "
          f"{args.lm_hidden}, bf16, random init; {new['prompts']} scored questions (+ image-swap and generalisation "
          f"ones), {args.threads} threads")
    print(f"old ({args.old_src}): {old['seconds']:.1f} s")
    print(f"new, computed:        {new['seconds']:.1f} s  ({old['seconds'] / new['seconds']:.1f}x faster)")
    print(f"new, cached (second run): {new['cache_read_seconds']:.2f} s  ({old['seconds'] / new['cache_read_seconds']:.0f}x "
          f"faster; read back: {new['cache_read_reused']}, the same as computed: {new['cached_same']})")
    print(f"identical figures and predictions, old vs new: {old['figures'] == new['figures']}")


if __name__ == "__main__":
    main()
