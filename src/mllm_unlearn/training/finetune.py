"""Supervised fine-tuning on a benchmark's people: the "vanilla" model (all people) and the
"gold" model (retain split only) of MLLMU-Bench and CLEAR, from any supported checkpoint or a
tiny model built here. One trainer (``training/loop.py: train``), three named recipes:

- ``mllmu``: MLLMU-Bench's ``finetune.py`` (LoRA r 16, α 16, dropout 0.05 on the language
  model's linear layers, lr 2e-5, 5 epochs, batch 4, linear schedule without warmup, AdamW,
  adapters merged). Its loss covers prompt and answer tokens (only padding masked); ours covers
  the answer only by default (``loss_on="answer"``, as every loss of this tool), the published
  one with ``loss_on="prompt+answer"`` (image placeholder tokens are never targets).
- ``clear``: CLEAR's ``mm/finetune.py`` (LoRA r 8, α 32, no dropout on every linear layer but
  the LM head, lr 1e-5, 3 epochs, batch 4 × gradient accumulation 2, weight decay 0.01, one
  epoch of warmup, answer-only labels, adapters merged).
- ``builtin``: the built-in world's knowledge-injection curriculum (``InjectionConfig``; what
  the tool's tiny models get; ``training/inject.py``).

The loss of ``mllmu``/``clear`` is the token mean over the batch's target tokens (Hugging Face's
causal-LM loss), averaged over accumulated micro-batches. Both benchmarks train in 8-bit/fp16
AdamW variants; here bf16 weights train as fp32 master weights (``loop.compute_dtype_for``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.collate import Encoder
from ..data.collate import collate as collate_examples
from ..data.items import Benchmark, Item
from ..models.base import VLM
from .inject import InjectionConfig
from .loop import LoraOptions, TrainConfig, TrainingPaused, train
from .losses import answer_token_nll

FINETUNE_META = "finetune.json"  # written last: its presence marks a finished fine-tune
LOSS_TARGETS = ("answer", "prompt+answer")
# peft's keyword: every linear layer except the output layer (CLEAR's ``find_all_linear_names``).
ALL_LINEAR = "all-linear"


@dataclass
class FinetuneRecipe:
    """A benchmark's fine-tuning settings (recorded in finetune.json as they were used)."""

    name: str
    source: str  # where the settings come from
    lr: float = 2e-5
    epochs: int = 5
    batch_size: int = 4
    grad_accumulation: int = 1
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    warmup_epochs: float | None = None
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    lora: LoraOptions | None = None
    loss_on: str = "answer"
    max_steps: int | None = None
    injection: InjectionConfig | None = None  # builtin only: the curriculum's settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mllmu() -> FinetuneRecipe:
    # torch's AdamW (its default weight decay 0.01) as MLLMU-Bench's ``AdamW(model.parameters(), lr)``;
    # its manual accelerate loop clips no gradient.
    return FinetuneRecipe(name="mllmu", source="MLLMU-Bench finetune.py (README: --batch_size 4 --lr 2e-5 --num_epochs 5)",
                          lr=2e-5, epochs=5, batch_size=4, schedule="linear", warmup_ratio=0.0, weight_decay=0.01,
                          grad_clip=0.0, lora=LoraOptions(r=16, alpha=16, dropout=0.05), loss_on="answer")


def _clear() -> FinetuneRecipe:
    # Hugging Face Trainer: max_grad_norm 1.0 by default.
    return FinetuneRecipe(name="clear", source="CLEAR mm/finetune.py with config/mm/finetune.yaml",
                          lr=1e-5, epochs=3, batch_size=4, grad_accumulation=2, schedule="linear", warmup_epochs=1.0,
                          weight_decay=0.01, grad_clip=1.0, lora=LoraOptions(r=8, alpha=32, dropout=0.0,
                                                                             target_modules=ALL_LINEAR),
                          loss_on="answer")


def _builtin() -> FinetuneRecipe:
    return FinetuneRecipe(name="builtin", source="this tool's knowledge-injection curriculum (training/inject.py)",
                          lr=InjectionConfig().lr, epochs=0, batch_size=InjectionConfig().batch_size, schedule="cosine",
                          loss_on="answer")


RECIPES = {"mllmu": _mllmu, "clear": _clear, "builtin": _builtin}


@dataclass
class FinetuneConfig:
    recipe: str = "mllmu"
    retain_only: bool = False  # train on the retain split only: the gold model
    lora: bool | None = None  # None: the recipe's (builtin: full); True: LoRA (builtin: LoraOptions()); False: full
    loss_on: str | None = None  # None: the recipe's ("answer"); "prompt+answer": MLLMU-Bench's published loss
    # Overrides of the recipe's settings (recorded): for short trials and tests.
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_steps: int | None = None
    gradient_checkpointing: bool = False
    shard: str | None = None  # "fsdp": full fine-tuning sharded over the processes (FSDP2)
    save_every: int | None = None  # resumable checkpoint every N optimizer steps
    resume: bool = False
    stop_after: int | None = None  # pause (checkpoint saved) after N steps in all; resume continues
    keep_adapter: bool = False  # LoRA: write a peft adapter folder instead of the merged checkpoint
    seed: int = 0
    injection: InjectionConfig | None = None  # builtin: the curriculum (None: InjectionConfig(seed=seed))
    progress: bool = True


def resolve_recipe(cfg: FinetuneConfig) -> FinetuneRecipe:
    """The recipe named by ``cfg.recipe`` with ``cfg``'s overrides applied; clear errors for bad values."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"--recipe {cfg.recipe!r} is unknown; recipes are {', '.join(RECIPES)}")
    recipe = RECIPES[cfg.recipe]()
    if cfg.recipe == "builtin":
        injection = cfg.injection or InjectionConfig(seed=cfg.seed)
        if cfg.lora is not None:
            injection = replace(injection, lora=LoraOptions() if cfg.lora else None)
        for option in ("loss_on", "epochs", "lr", "batch_size", "max_steps"):
            if getattr(cfg, option) is not None:
                raise ValueError(f"--recipe builtin: --{option.replace('_', '-')} is for the mllmu and clear recipes; "
                                 "the injection curriculum (InjectionConfig) sets its own")
        if cfg.save_every is not None or cfg.resume or cfg.stop_after is not None:
            raise ValueError("--recipe builtin trains in several stages with their own random draws: --save-every, "
                             "--resume and stopping early are for the mllmu and clear recipes")
        if cfg.shard is not None:
            raise ValueError("--recipe builtin does not shard (tiny models); --shard is for the mllmu and clear recipes")
        return replace(recipe, lr=injection.lr, batch_size=injection.batch_size, lora=injection.lora,
                       injection=injection)
    if cfg.lora is False:
        recipe = replace(recipe, lora=None)
    if cfg.loss_on is not None:
        if cfg.loss_on not in LOSS_TARGETS:
            raise ValueError(f"--loss-on {cfg.loss_on!r}: expected one of {', '.join(LOSS_TARGETS)}")
        recipe = replace(recipe, loss_on=cfg.loss_on)
    overrides = {k: getattr(cfg, k) for k in ("epochs", "lr", "batch_size", "max_steps") if getattr(cfg, k) is not None}
    for key, value in overrides.items():
        if value <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {value}")
    return replace(recipe, **overrides)


def training_items(benchmark: Benchmark, retain_only: bool) -> tuple[Benchmark, list[Item]]:
    """The benchmark to train on (retain split only for the gold model) and its fine-tuning items."""
    trained_on = benchmark.retain_only() if retain_only else benchmark
    if retain_only and not benchmark.forget_ids:
        raise ValueError(f"--retain-only: benchmark {benchmark.name} has no forget people")
    return trained_on, list(trained_on.finetune_train)


def data_hash(items: Sequence[Item]) -> str:
    """A key of the training data's content (questions, answers, which image)."""
    from ..utils import stable_hash

    return stable_hash([(i.person_id, i.modality, i.question, i.answer, i.image_key) for i in items])


def finetune(vlm: VLM, benchmark: Benchmark, cfg: FinetuneConfig | None = None,
             checkpoint_dir: str | Path | None = None, merge_lora: bool = True) -> dict[str, Any]:
    """Fine-tune ``vlm`` in place on ``benchmark``'s training data (retain split only with
    ``cfg.retain_only``) with ``cfg.recipe``. Returns the record finetune.json holds (recipe as
    used, data, steps, loss curve; builtin: the curriculum's history). ``checkpoint_dir``:
    where resumable state goes (``cfg.save_every``/``resume``/``stop_after``). With
    ``merge_lora=False`` the LoRA adapters are returned under ``"lora_factors"`` (not recorded)
    and ``vlm`` keeps its weights."""
    cfg = cfg or FinetuneConfig()
    recipe = resolve_recipe(cfg)
    trained_on, items = training_items(benchmark, cfg.retain_only)
    record: dict[str, Any] = {"recipe": recipe.to_dict(), "retain_only": cfg.retain_only,
                              "forget_ids": sorted(benchmark.forget_ids) if cfg.retain_only else None,
                              "data": {"benchmark": benchmark.name, "items": len(items), "hash": data_hash(items)}}
    if recipe.name == "builtin":
        from .inject import _builtin_curriculum

        history = _builtin_curriculum(vlm, trained_on, recipe.injection, progress=cfg.progress)
        record["history"] = history
        record["steps"] = sum(stage.get("steps", 0) for stage in history.values())
        record["loss_curve"] = {name: stage.get("losses", []) for name, stage in history.items()}
        return record
    if not items:
        raise ValueError(f"benchmark {trained_on.name} has no fine-tuning items (ft_Data / the training config)")
    result = train(vlm.model, items, _collate(vlm, recipe.loss_on), _token_mean_loss, _train_config(recipe, cfg, checkpoint_dir),
                   description=f"finetune ({recipe.name}{', retain only' if cfg.retain_only else ''})",
                   merge_lora=merge_lora, shard_units=vlm.adapter.shard_units)
    record.update(steps=result.steps, loss_curve=result.losses)
    if not merge_lora:
        record["lora_factors"] = result.lora_factors
    return record


def _train_config(recipe: FinetuneRecipe, cfg: FinetuneConfig, checkpoint_dir: str | Path | None) -> TrainConfig:
    return TrainConfig(lr=recipe.lr, epochs=recipe.epochs, max_steps=recipe.max_steps, batch_size=recipe.batch_size,
                       grad_accumulation=recipe.grad_accumulation, schedule=recipe.schedule,
                       warmup_ratio=recipe.warmup_ratio, warmup_epochs=recipe.warmup_epochs,
                       weight_decay=recipe.weight_decay, grad_clip=recipe.grad_clip, seed=cfg.seed, lora=recipe.lora,
                       progress=cfg.progress, shard=cfg.shard, gradient_checkpointing=cfg.gradient_checkpointing,
                       save_every=cfg.save_every, resume=cfg.resume, stop_after=cfg.stop_after,
                       checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None)


def _collate(vlm: VLM, loss_on: str) -> Any:
    encoder = Encoder(vlm)
    images = vlm.adapter.visual_token_ids(vlm.model)

    def collate(batch: list[Item]) -> dict[str, torch.Tensor]:
        examples = [encoder.training_example(item, prompt) for item, prompt in zip(batch, encoder.prompts(batch))]
        out = collate_examples(examples, encoder.pad_id)
        if loss_on == "prompt+answer":  # MLLMU-Bench: every token but padding (and image placeholders)
            targets = out["attention_mask"].bool()
            for token in images:
                targets &= out["input_ids"] != token
            out["labels"] = torch.where(targets, out["input_ids"], torch.full_like(out["input_ids"], -100))
        return {k: v.to(vlm.device) for k, v in out.items()}

    return collate


def _token_mean_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hugging Face's causal-LM loss: the mean NLL over all the batch's target tokens."""
    nll, mask = answer_token_nll(model, batch)
    count = mask.sum()
    if count == 0:
        raise ValueError("a fine-tuning batch has no target token (empty answers?)")
    return nll.sum() / count


# --- the job: a base checkpoint (or a fresh tiny model) -> a fine-tuned checkpoint ---------------

@dataclass
class FinetuneJob:
    """What ``mllm-unlearn finetune`` does: base model, benchmark, output, and how to train."""

    out: str
    model: str | None = None  # a local checkpoint; None: a fresh tiny model of ``family`` built here
    benchmark: str | None = None  # a directory (MLLMU-Bench or CLEAR layout), "clear", or None: the built-in world
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    family: str = "llava"
    size: Any = None  # TinySize of a fresh tiny model (None: the default)
    world: Any = None  # WorldConfig of the built-in world (None: the default with ``finetune.seed``)
    forget_percent: int = 10
    clear_tofu: bool = False
    device: str = "auto"
    dtype: str = "auto"
    max_pixels: int | None = None
    cache_dir: str = ".cache/mllm_unlearn"


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
    state = state_dir_of(out)
    if resume and not state.is_dir():
        raise FileNotFoundError(f"--resume: no saved state for --out {out} ({state} does not exist)")


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Load ``job.model`` (or build a tiny model), fine-tune it on the benchmark, save it at
    ``job.out`` (LoRA merged; with ``keep_adapter`` a peft adapter folder) with finetune.json
    written last. Returns finetune.json's content."""
    from ..data import WorldConfig
    from ..models import TinySize, load_vlm
    from ..pipeline import RunConfig, build_tiny_base, injection_meta_for, prepare_benchmark, versions
    from ..utils import (atomic_write_text, init_distributed, is_main_process, resolve_device, seed_everything,
                         stable_hash, wait_for_everyone)
    from . import sharding
    from .inject import INJECTION_META, injection_meta_text

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
    _, items = training_items(benchmark, cfg.retain_only)
    settings = {"recipe": recipe.to_dict(), "model": job.model, "family": job.family if job.model is None else None,
                "size": asdict(size) if job.model is None else None, "benchmark": benchmark_key,
                "retain_only": cfg.retain_only, "forget_ids": sorted(benchmark.forget_ids) if cfg.retain_only else None,
                "data_hash": data_hash(items), "seed": cfg.seed, "dtype": job.dtype, "shard": cfg.shard,
                "gradient_checkpointing": cfg.gradient_checkpointing, "keep_adapter": cfg.keep_adapter}
    config_hash = stable_hash(settings)
    state = state_dir_of(job.out)
    _check_state(state, cfg, config_hash)

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
            from ..interventions import LowRankDelta

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
    return meta


def _check_state(state: Path, cfg: FinetuneConfig, config_hash: str) -> None:
    """A resumed fine-tune must be the one that saved the state; a fresh one must not overwrite it."""
    from ..utils import is_main_process, wait_for_everyone

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
