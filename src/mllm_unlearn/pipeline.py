"""The whole job: benchmark -> vanilla model (cached) -> evaluate -> unlearn -> evaluate -> report."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import Benchmark, WorldConfig, generate_world, load_mllmu
from .data.synthetic import all_template_texts
from .eval import EvalConfig, Evaluator
from .methods import MethodConfig, get_method
from .methods.base import UnlearningDiverged
from .models import VLM, TinySize, load_vlm
from .models.tiny import build_tiny_vlm, words_of
from .report import render_markdown
from .training.inject import InjectionConfig, inject_knowledge, injection_texts, injection_cache_key, write_injection_meta
from .utils import (atomic_write_text, init_distributed, is_main_process, peak_memory_mb, process_rank_and_count,
                    resolve_device, seed_everything, wait_for_everyone)


@dataclass
class RunConfig:
    name: str = "default"
    family: str = "llava"
    model: str | None = None  # a local checkpoint already holding the knowledge (skips injection)
    benchmark: str | None = None  # an MLLMU-Bench directory; default: the built-in world
    forget_percent: int = 10
    method: str = "ga"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    runs_dir: str = "runs"
    cache_dir: str = ".cache/mllm_unlearn"
    world: WorldConfig = field(default_factory=WorldConfig)
    size: TinySize = field(default_factory=TinySize)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    method_cfg: MethodConfig = field(default_factory=MethodConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    progress: bool = True


def benchmark_texts(benchmark: Benchmark) -> list[str]:
    """Every text a tiny tokenizer must be able to spell for this benchmark."""
    items = benchmark.finetune_train + benchmark.pretrain_train + [i for s in benchmark.eval_splits.values() for i in s]
    return all_template_texts() + [t for i in items for t in [i.question, i.answer, *(i.options or {}).values()]]


def prepare_benchmark(cfg: RunConfig) -> tuple[Benchmark, str]:
    if cfg.benchmark:
        root = Path(cfg.benchmark)
        key = f"dir:{root.resolve()}"
    else:
        root = Path(cfg.cache_dir) / "benchmarks" / f"synthetic-{cfg.world.key()}"
        key = f"synthetic:{cfg.world.key()}"
        if not (root / "world.json").is_file() and is_main_process():
            generate_world(root, cfg.world)
        wait_for_everyone()
    return load_mllmu(root, cfg.forget_percent, seed=cfg.seed), key


def prepare_vanilla(cfg: RunConfig, benchmark: Benchmark, benchmark_key: str) -> tuple[VLM, str, bool]:
    """Load the given checkpoint, or the cached injected tiny model, or build and train one."""
    if cfg.model:
        return load_vlm(cfg.model, cfg.device, cfg.dtype), cfg.model, False
    key = injection_cache_key(cfg.family, asdict(cfg.size), benchmark_key, cfg.injection)
    path = Path(cfg.cache_dir) / "vanilla" / f"{cfg.family}-{key}"
    if (path / "injection.json").is_file():
        return load_vlm(path, cfg.device, cfg.dtype), str(path), False
    seed_everything(cfg.seed)
    vlm = build_tiny_vlm(cfg.family, words_of(benchmark_texts(benchmark) + injection_texts(cfg.injection)), cfg.size, seed=cfg.injection.seed,
                         device=str(resolve_device(cfg.device)))
    history = inject_knowledge(vlm, benchmark, cfg.injection, progress=cfg.progress)
    if is_main_process():  # every process holds the same weights (DDP); one writes them
        vlm.save(path)
        write_injection_meta(path, {"family": cfg.family, "benchmark": benchmark_key, "injection": cfg.injection.to_dict(),
                                    "size": asdict(cfg.size), "history": history})
    wait_for_everyone()
    # Reload through the public loading path, exactly as a user's checkpoint would be.
    return load_vlm(path, cfg.device, cfg.dtype), str(path), True


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    from . import __version__

    return {"mllm_unlearn": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run everything and write ``runs/<name>/results.json`` and ``report.md``; returns the results.

    Under ``accelerate launch`` every process runs this: training is data-parallel, evaluation
    items are shared out and gathered, and only the main process writes files.
    """
    init_distributed(cpu=resolve_device(cfg.device).type == "cpu")
    method = get_method(cfg.method)  # fail on a bad name or option before any work
    method.check_options(cfg.method_cfg)
    run_dir = Path(cfg.runs_dir) / cfg.name
    timings: dict[str, float] = {}

    start = time.perf_counter()
    benchmark, benchmark_key = prepare_benchmark(cfg)
    timings["benchmark"] = time.perf_counter() - start

    start = time.perf_counter()
    vlm, model_path, trained = prepare_vanilla(cfg, benchmark, benchmark_key)
    timings["knowledge injection" if trained else "load vanilla model"] = time.perf_counter() - start

    evaluator = Evaluator(vlm, EvalConfig(**{**asdict(cfg.eval), "image_swap_check": True}))
    start = time.perf_counter()
    vanilla = evaluator.evaluate(benchmark)
    timings["evaluate vanilla"] = time.perf_counter() - start

    seed_everything(cfg.seed)
    start = time.perf_counter()
    try:
        edit = method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg.method_cfg)
    except UnlearningDiverged as error:
        if is_main_process():
            error.last_good.save(run_dir / "edit-last-good")
        raise UnlearningDiverged(f"{error} The edit of the last finite step is saved in {run_dir / 'edit-last-good'}.",
                                 error.last_good) from error
    timings[f"unlearn ({cfg.method})"] = time.perf_counter() - start
    if is_main_process():
        edit.save(run_dir / "edit")
    wait_for_everyone()

    evaluator.cfg = cfg.eval
    start = time.perf_counter()
    unlearned = evaluator.evaluate(benchmark, edit)
    timings["evaluate unlearned"] = time.perf_counter() - start

    config = {
        "name": cfg.name, "family": vlm.adapter.family, "model_path": model_path, "method": cfg.method,
        "benchmark_name": benchmark.name, "benchmark": benchmark.meta, "forget_percent": cfg.forget_percent,
        "seed": cfg.seed, "device": str(vlm.device), "processes": process_rank_and_count()[1], "dtype": cfg.dtype, "world": asdict(cfg.world),
        "injection": cfg.injection.to_dict(), "method_config": cfg.method_cfg.to_dict(), "eval": asdict(cfg.eval),
        "versions": versions(),
    }
    results = {
        "config": config,
        "vanilla": vanilla,
        "unlearned": unlearned,
        "edit": {"kind": edit.kind, "path": str(run_dir / "edit"), "steps": edit.meta.get("steps")},
        "cost": {"wall_time_s": timings, "peak_memory_mb": peak_memory_mb(vlm.device),
                 "changed_parameters": getattr(edit, "changed_parameters", 0)},
    }
    if is_main_process():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
        atomic_write_text(run_dir / "report.md", render_markdown(results))
    wait_for_everyone()
    return results
