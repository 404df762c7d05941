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
from .models import VLM, TinySize, load_vlm
from .models.tiny import build_tiny_vlm, words_of
from .report import render_markdown
from .training.inject import InjectionConfig, inject_knowledge, injection_cache_key, write_injection_meta
from .utils import atomic_write_text, peak_memory_mb, resolve_device, seed_everything


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
        if not (root / "world.json").is_file():
            generate_world(root, cfg.world)
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
    vlm = build_tiny_vlm(cfg.family, words_of(benchmark_texts(benchmark)), cfg.size, seed=cfg.injection.seed,
                         device=str(resolve_device(cfg.device)))
    history = inject_knowledge(vlm, benchmark, cfg.injection, progress=cfg.progress)
    vlm.save(path)
    write_injection_meta(path, {"family": cfg.family, "benchmark": benchmark_key, "injection": cfg.injection.to_dict(),
                                "size": asdict(cfg.size), "history": history})
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
    """Run everything and write ``runs/<name>/results.json`` and ``report.md``; returns the results."""
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
    retain = benchmark.retain_train + (benchmark.pretrain_train if method.uses_prior_knowledge else [])
    edit = method.unlearn(vlm, benchmark.forget_train, retain, cfg.method_cfg)
    timings[f"unlearn ({cfg.method})"] = time.perf_counter() - start
    edit.save(run_dir / "edit")

    evaluator.cfg = cfg.eval
    start = time.perf_counter()
    unlearned = evaluator.evaluate(benchmark, edit)
    timings["evaluate unlearned"] = time.perf_counter() - start

    config = {
        "name": cfg.name, "family": vlm.adapter.family, "model_path": model_path, "method": cfg.method,
        "benchmark_name": benchmark.name, "benchmark": benchmark.meta, "forget_percent": cfg.forget_percent,
        "seed": cfg.seed, "device": str(vlm.device), "dtype": cfg.dtype, "world": asdict(cfg.world),
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
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(run_dir / "report.md", render_markdown(results))
    return results
