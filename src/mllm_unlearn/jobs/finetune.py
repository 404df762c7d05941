"""``mllm-unlearn finetune``: a base checkpoint (or a fresh tiny model) -> a fine-tuned checkpoint
with ``finetune.json`` written last (the training itself: ``recipes/finetune.py``)."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import WorldConfig
from ..eval import EvalConfig, Evaluator
from ..eval.clear import ClearEvalConfig, ClearEvaluator
from ..eval.knowledge import FACE_RECOGNITION_SUFFIX, SUMMARY_SPLITS, knowledge_summary
from ..eval.stages import stage_failure
from ..interventions import LowRankDelta
from ..models import TinySize, load_vlm
from ..recipes.finetune import FINETUNE_META, FinetuneConfig, data_hash, finetune, finetune_items, resolve_recipe
from ..recipes.inject import INJECTION_META, InjectionConfig, injection_meta_text, warn
from ..training import sharding
from ..utils import (
    atomic_write_text,
    check_writable_folder,
    init_distributed,
    is_main_process,
    resolve_device,
    seed_everything,
    stable_hash,
    wait_for_everyone,
)
from .config import RunConfig, check_dtype_and_forget_percent
from .prepare import build_tiny_base, injection_meta_for, prepare_benchmark
from .results import versions


@dataclass
class FinetuneJob:
    """What ``mllm-unlearn finetune`` does: base model, benchmark, output, and how to train."""

    out: str
    model: str | None = None  # a local checkpoint; None: a fresh tiny model of ``family`` built here
    benchmark: str | None = None  # a directory (MLLMU-Bench or CLEAR layout), "clear", or None: the built-in world
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    family: str = RunConfig.family
    size: Any = None  # TinySize of a fresh tiny model (None: the default)
    world: Any = None  # WorldConfig of the built-in world (None: the default with ``finetune.seed``)
    forget_percent: int = 10
    clear_tofu: bool = False
    device: str = "auto"
    dtype: str = "auto"
    max_pixels: int | None = None
    cache_dir: str = ".cache/mllm_unlearn"

    def __post_init__(self) -> None:
        check_dtype_and_forget_percent(self)


def state_dir_of(out: str | Path) -> Path:
    """Where a fine-tune into ``out`` keeps its resumable state (beside it, removed when done)."""
    out = Path(out)
    return out.parent / f"{out.name}.finetune-state"


def check_output(out: str | Path, resume: bool) -> None:
    out = Path(out)
    if (out / FINETUNE_META).is_file():
        raise FileExistsError(f"--out {out} already holds a finished fine-tune ({out / FINETUNE_META}): "
                              "choose a new folder")
    if out.exists():
        raise FileExistsError(f"--out {out} already exists and is not a finished fine-tune (no {FINETUNE_META}): "
                              "choose a new folder")
    check_writable_folder(out, "--out")  # before any work, not when the trained model is saved
    state = state_dir_of(out)
    if resume and not state.is_dir():
        raise FileNotFoundError(f"--resume: no saved state for --out {out} ({state} does not exist)")


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Load ``job.model`` (or build a tiny model), fine-tune it on the benchmark, save it at
    ``job.out`` (LoRA merged; with ``keep_adapter`` a peft adapter folder) with finetune.json
    written last. Returns finetune.json's content."""
    # As a run: before accelerate's state exists, DeepSpeed refused and `accelerate launch --use_fsdp` claimed.
    sharding.refuse_deepspeed("mllm-unlearn finetune")
    job = replace(job, finetune=replace(job.finetune, shard=sharding.claim_accelerate_fsdp(job.finetune.shard)))
    cfg = job.finetune
    recipe = resolve_recipe(cfg)  # bad options fail before any work
    if cfg.shard is not None and recipe.lora is not None:
        raise ValueError(f"--shard fsdp is for full fine-tuning (--full); the {recipe.name} recipe's LoRA fits one GPU")
    if cfg.shard is not None and (cfg.save_every is not None or cfg.resume or cfg.stop_after is not None):
        raise ValueError("--save-every, --resume and --stop-after are not supported with --shard fsdp yet")
    init_distributed(cpu=resolve_device(job.device).type == "cpu")
    check_output(job.out, cfg.resume)
    if cfg.keep_adapter and recipe.lora is None:
        raise ValueError("--keep-adapter writes the LoRA adapters: it needs a LoRA recipe (not --full)")
    if job.model is not None and not (Path(job.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {job.model}: not a checkpoint folder ({Path(job.model) / 'config.json'} is missing)")
    if job.benchmark and job.benchmark != "clear" and not Path(job.benchmark).is_dir():
        raise FileNotFoundError(f"--benchmark {job.benchmark} does not exist")
    size = job.size or TinySize()
    run_cfg = RunConfig(family=job.family, model=job.model, benchmark=job.benchmark, clear_tofu=job.clear_tofu,
                        forget_percent=job.forget_percent, seed=cfg.seed, device=job.device, dtype=job.dtype,
                        max_pixels=job.max_pixels, cache_dir=job.cache_dir, world=job.world or WorldConfig(seed=cfg.seed),
                        size=size, injection=recipe.injection or InjectionConfig(seed=cfg.seed), progress=cfg.progress)
    benchmark, benchmark_key = prepare_benchmark(run_cfg)
    _, items = finetune_items(benchmark, cfg.retain_only)
    settings = {"recipe": recipe.to_dict(), "model": job.model, "family": job.family if job.model is None else None,
                "size": asdict(size) if job.model is None else None, "benchmark": benchmark_key,
                "retain_only": cfg.retain_only, "forget_ids": sorted(benchmark.forget_ids) if cfg.retain_only else None,
                "data_hash": data_hash(items), "seed": cfg.seed, "dtype": job.dtype, "shard": cfg.shard,
                "gradient_checkpointing": cfg.gradient_checkpointing, "keep_adapter": cfg.keep_adapter}
    config_hash = stable_hash(settings)
    state = state_dir_of(job.out)
    check_state(state, cfg, config_hash)

    if job.model is None:  # exactly as a run builds its tiny models (the same seeds, no reseeding after)
        vlm = build_tiny_base(run_cfg, benchmark)
    else:
        vlm = load_vlm(job.model, job.device, job.dtype, job.max_pixels)
        seed_everything(cfg.seed)
    record = finetune(vlm, benchmark, cfg, checkpoint_dir=state, merge_lora=not cfg.keep_adapter)
    factors = record.pop("lora_factors", None)
    meta = {**record, "base_model": job.model or f"tiny {job.family} built here", "benchmark": benchmark_key,
            "forget_percent": job.forget_percent, "config": settings, "config_hash": config_hash,
            "output": "peft-adapter" if cfg.keep_adapter else "checkpoint", "versions": versions()}
    text = json.dumps(meta, indent=2, default=str)
    if is_main_process():
        if cfg.keep_adapter:
            LowRankDelta(factors or {}, meta={"recipe": recipe.name}).export_peft_adapter(job.out, base_model=job.model)
            atomic_write_text(Path(job.out) / FINETUNE_META, text)  # last: marks the folder finished
        else:
            extra = {FINETUNE_META: text}
            if job.model is None:  # a tiny model this tool built: loads and evaluates as its own models do
                extra[INJECTION_META] = injection_meta_text(injection_meta_for(run_cfg, benchmark_key, cfg.retain_only,
                                                                               benchmark, record))
            vlm.save(job.out, extra_files=extra)  # all files appear together
        shutil.rmtree(state, ignore_errors=True)
    wait_for_everyone()
    # What the written model knows (every process evaluates its share); finetune.json gets it after the
    # checkpoint is complete, so a failing evaluation never costs the checkpoint.
    adapter = LowRankDelta(factors or {}, meta={"recipe": recipe.name}) if cfg.keep_adapter else None
    try:
        meta["knowledge"] = knowledge_of(vlm, benchmark, adapter)
    except Exception as error:  # noqa: BLE001 - the checkpoint is complete; the summary's failure is recorded
        meta["knowledge"] = {"failed": stage_failure("knowledge summary", error)}
        warn(f"the knowledge summary of {job.out} failed ({type(error).__name__}: {error}); the checkpoint is complete")
    if is_main_process():
        atomic_write_text(Path(job.out) / FINETUNE_META, json.dumps(meta, indent=2, default=str))
    wait_for_everyone()
    return meta


def knowledge_of(vlm: Any, benchmark: Any, edit: Any = None) -> dict[str, Any]:
    """The knowledge summary (eval/knowledge.py) of ``vlm`` (with ``edit``: a kept LoRA adapter) on the
    benchmark's forget, retain and real-world people: classification accuracy per modality with item
    counts and significance."""
    if benchmark.protocol == "clear":
        splits = {k: v for k, v in benchmark.eval_splits.items() if k.removesuffix(FACE_RECOGNITION_SUFFIX) in SUMMARY_SPLITS}
        evaluation = ClearEvaluator(vlm, ClearEvalConfig(rouge=False, progress=False)).evaluate(
            replace(benchmark, eval_splits=splits), edit)
    else:  # every split (the evaluator expects them), classification only
        evaluation = Evaluator(vlm, EvalConfig(tasks=("mcq",), progress=False)).evaluate(benchmark, edit)
    return knowledge_summary(evaluation, benchmark.protocol)


def check_state(state: Path, cfg: FinetuneConfig, config_hash: str) -> None:
    """A resumed fine-tune must be the one that saved the state; a fresh one must not overwrite it."""
    job_file = state / "job.json"
    if cfg.resume:
        saved = json.loads(job_file.read_text()).get("config_hash") if job_file.is_file() else None
        if saved != config_hash:
            raise ValueError(f"--resume: the state in {state} was saved by a fine-tune with other settings, model or "
                             "data (its config hash differs): resume with the same options, or remove it")
        return
    if state.exists():
        raise FileExistsError(f"{state} holds the saved state of an unfinished fine-tune into the same --out: "
                              "continue it with --resume, or remove it")
    if (cfg.save_every is not None or cfg.stop_after is not None) and is_main_process():
        state.mkdir(parents=True)
        (state / "job.json").write_text(json.dumps({"config_hash": config_hash}))
    wait_for_everyone()
