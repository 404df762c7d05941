"""A run the knowledge check stopped: advice that fits how its vanilla model was made, and a run
folder that keeps what was measured (results.json with the vanilla figures the check read, i.e. the
forget split's, the check and its reason, every later stage marked as not run; the reports) before
the run exits with the error."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data import Benchmark
from ..eval.knowledge import DEFAULT_ADVICE
from ..models import VLM
from ..recipes.finetune import FINETUNE_META
from ..recipes.inject import INJECTION_META
from .config import RunConfig
from .prepare import vanilla_source
from .record import run_record
from .results import write_results

STOPPED_STAGE = "knowledge check"


def knowledge_advice(cfg: RunConfig, model_path: str) -> str:
    """What to do about a vanilla model that does not know the forget people, by how it was made:
    trained by this tool (knowledge injection), an ``mllm-unlearn finetune`` output, or a user's checkpoint."""
    if cfg.model is None:
        return (f"The vanilla model was trained by this tool and its knowledge injection did not teach them: its "
                f"{Path(model_path) / INJECTION_META} records each stage's probe and whether it reached its target; "
                "train longer (--inject-epochs, --pretrain-epochs, or --inject-target closer to 1) or with more people "
                "per stage's questions")
    meta_file = Path(cfg.model) / FINETUNE_META
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        recipe = (meta.get("recipe") or {}).get("name", "?")
        epochs = (meta.get("recipe") or {}).get("epochs")
        base = meta.get("base_model") or "BASE"
        more = f"--epochs {2 * epochs}" if isinstance(epochs, int) and epochs > 0 else "--epochs N (more than before)"
        return (f"--model {cfg.model} is an `mllm-unlearn finetune` output (recipe {recipe}"
                + (f", {epochs} epochs" if isinstance(epochs, int) and epochs > 0 else "")
                + f", {meta.get('steps', '?')} steps) that did not teach them: fine-tune again for longer "
                f"(`mllm-unlearn finetune --model {base} --recipe {recipe} {more} --benchmark DIR --out NEW`) and check "
                "the knowledge summary it prints at the end")
    if (Path(cfg.model) / INJECTION_META).is_file():
        return (f"--model {cfg.model} was trained by this tool and its knowledge injection did not teach them: see its "
                f"{INJECTION_META} (each stage's probe and target) and train longer")
    return DEFAULT_ADVICE


def not_run(reason: str) -> dict[str, str]:
    """A stage's mark in results.json: it did not run, and why (rendered as "Not run: ...")."""
    return {"skipped": reason}


def write_stopped_run(run_dir: str | Path, cfg: RunConfig, vlm: VLM, benchmark: Benchmark, *, vanilla: dict[str, Any],
                      knowledge: dict[str, Any], message: str, advice: str, model_path: str, trained: bool,
                      preset: str | None, timings: dict[str, float], gold: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json and the reports of a run the knowledge check stopped; returns the results."""
    reason = f"unlearning did not run: the knowledge check failed ({STOPPED_STAGE}; see knowledge_check)"
    config = run_record(cfg, vlm, benchmark, model_path=model_path,
                        method_name=cfg.method if cfg.edit is None else "given edit", preset=preset,
                        method_config=cfg.method_cfg.to_dict() if cfg.edit is None and cfg.method_cfg else None,
                        vanilla_source=vanilla_source(model_path, trained, cfg))
    config.update({"eval": asdict(cfg.eval), "min_knowledge": cfg.min_knowledge, "allow_unknown": cfg.allow_unknown})
    results = {
        "config": config,
        "protocol": benchmark.protocol,
        "complete": False,  # a stopped run (jobs/run_folder.py: it replaces no finished run of the same name)
        "stopped": {"stage": STOPPED_STAGE, "reason": message, "advice": advice},
        "knowledge_check": {**knowledge, "advice": advice},
        "vanilla": vanilla,
        **({"gold": gold} if gold is not None else {}),
        "unlearned": {"figures": {}, **not_run(reason)},
        "robustness": {"mia": not_run(reason), "relearn": not_run(reason)},
        "failures": [],
        "cost": {"wall_time_s": dict(timings)},
    }
    write_results(run_dir, results)
    return results
