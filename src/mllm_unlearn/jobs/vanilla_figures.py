"""The vanilla model's figures a job needs, read from the evaluation cache (eval/cache.py) when an
earlier job computed them for the same model, items and settings, else computed and cached.

Covered: the knowledge check's forget evaluation, the whole vanilla evaluation (every split,
task and scorer, the image-swap diagnostic), CLEAR's gold-model evaluation, the generalisation
breakdown, membership inference, ``sequence``'s and ``sweep``'s vanilla evaluations. Not covered:
the attack battery's vanilla controls (each attack measures them inside its own run)."""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..data.items import Benchmark, Item
from ..eval.cache import CACHE_FOLDER, EvalCache, folder_content_hash
from ..eval.clear import ClearEvaluator
from ..eval.generalisation import generalisation_breakdown
from ..eval.knowledge import forget_evaluation
from ..models import VLM
from .config import RunConfig

MAIN_PART = "evaluation"  # the part results.json's ``vanilla_eval_cache`` names


def vanilla_cache(cfg: RunConfig, model_path: str | None, vlm: VLM) -> EvalCache:
    """The cache of the model at ``model_path`` as loaded in ``vlm``; reading switched off by
    ``cfg.eval_cache`` False (``--no-eval-cache``: recomputed, and the cache rewritten)."""
    root = Path(cfg.cache_dir) / CACHE_FOLDER
    if model_path is None or not Path(model_path).is_dir():
        return EvalCache(None, {})  # no folder to name the model by: nothing cached
    model_key = {"content": folder_content_hash(model_path, root), "dtype": str(vlm.dtype),
                 "device": vlm.device.type, "max_pixels": cfg.max_pixels}
    return EvalCache(root, model_key, reuse=cfg.eval_cache)


def settings(config: Any, **extra: Any) -> dict[str, Any]:
    """An evaluation config as a cache key's settings (progress bars change no figure)."""
    values = asdict(config) if is_dataclass(config) else dict(config)
    return {**{k: v for k, v in values.items() if k != "progress"}, **extra}


def items_read(evaluator: Any, benchmark: Benchmark) -> list[Item]:
    if isinstance(evaluator, ClearEvaluator):
        return [i for items in benchmark.eval_splits.values() for i in items]
    return evaluator.items_read(benchmark)


def cached_forget_evaluation(cache: EvalCache, evaluator: Any, benchmark: Benchmark,
                             modalities: Iterable[str]) -> dict[str, Any]:
    """``eval.knowledge.forget_evaluation``, cached (what the knowledge check reads)."""
    modalities = sorted(modalities)
    return cache.fetch("knowledge", items_read(evaluator, benchmark), settings(evaluator.cfg, modalities=modalities),
                       lambda: forget_evaluation(evaluator, benchmark, modalities))


def cached_evaluation(cache: EvalCache, evaluator: Any, benchmark: Benchmark, known: dict[str, Any] | None = None,
                      gold: dict[str, Any] | None = None, part: str = MAIN_PART) -> dict[str, Any]:
    """The whole evaluation of the unedited model, cached. ``known``: the forget evaluation of the
    same model and settings, whose records it takes rather than scoring them again (MLLMU-Bench);
    ``gold``: CLEAR's gold-model results (forget quality), part of the key."""
    if isinstance(evaluator, ClearEvaluator):
        gold_key = None if gold is None else gold.get("predictions")
        return cache.fetch(part, items_read(evaluator, benchmark), settings(evaluator.cfg, gold=gold_key),
                           lambda: evaluator.evaluate(benchmark, gold=gold))
    return cache.fetch(part, items_read(evaluator, benchmark), settings(evaluator.cfg),
                       lambda: evaluator.evaluate(benchmark, known=(known or {}).get("predictions", ())))


def cached_generalisation(cache: EvalCache, evaluator: Any, benchmark: Benchmark) -> dict[str, Any]:
    """``generalisation_breakdown`` of the unedited model, cached."""
    items = [i for split in ("forget", "test") for i in benchmark.eval_splits.get(split, [])]
    return cache.fetch("generalisation", items, settings(evaluator.cfg),
                       lambda: generalisation_breakdown(evaluator, benchmark))


def cached_value(cache: EvalCache | None, part: str, items: Sequence[Item], key_settings: Any,
                 compute: Callable[[], Any]) -> Any:
    """Any other vanilla figure (membership inference, a job's own evaluation view), cached when a
    cache is given."""
    return compute() if cache is None else cache.fetch(part, items, key_settings, compute)
