"""What results.json's ``config`` records of a run, built once for ``run`` and ``sequence``."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..data import Benchmark
from ..models import VLM
from ..utils import dtype_name, process_rank_and_count
from .config import RunConfig
from .prepare import training_warnings
from .presets import model_built_here, preset_choice_family, preset_record
from .results import versions


def run_record(cfg: RunConfig, vlm: VLM, benchmark: Benchmark, *, model_path: str, method_name: str,
               preset: str | None, method_config: dict[str, Any] | None, vanilla_source: str) -> dict[str, Any]:
    """The run's settings as used: model, benchmark, seed, device and precision, the method's
    settings and which preset they came from, and the versions of what the figures depend on.
    ``preset``: "tiny" (tuned for this tool's models), "paper" (7B-class), "given", or None (a
    given edit trains nothing)."""
    return {
        "name": cfg.name, "family": vlm.adapter.family, "model_path": model_path, "method": method_name,
        "vanilla_source": vanilla_source, "edit_source": cfg.edit,
        # what the vanilla model's training warned about (skipped stages, targets missed, flat losses)
        "vanilla_training_warnings": training_warnings(model_path),
        "benchmark_name": benchmark.name, "benchmark": benchmark.meta, "forget_percent": cfg.forget_percent,
        "seed": cfg.seed, "device": str(vlm.device), "processes": process_rank_and_count()[1],
        "dtype": dtype_name(vlm.dtype), "dtype_option": cfg.dtype, "world": asdict(cfg.world),
        # --max-pixels as asked, and the cap the image processor applied (None: fixed-size images)
        "max_pixels": cfg.max_pixels, "image_max_pixels": vlm.adapter.image_max_pixels(vlm.processor),
        "injection": cfg.injection.to_dict(),
        "model_built_here": model_built_here(cfg), "preset": preset,
        # the tiny model family whose validation sweeps chose the tiny preset's searched values
        "preset_family": preset_choice_family(cfg) if preset == "tiny" else None,
        "method_config": method_config,
        "versions": versions(),
        # a --preset file (e.g. a sweep's choice) applied on top of the preset above
        "preset_file": preset_record(cfg.preset) if cfg.preset is not None else None,
    }
