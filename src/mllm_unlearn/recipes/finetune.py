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
  the tool's tiny models get; ``recipes/inject.py``).

The loss of ``mllmu``/``clear`` is the token mean over the batch's target tokens (Hugging Face's
causal-LM loss), averaged over accumulated micro-batches. Both benchmarks train in 8-bit/fp16
AdamW variants; here bf16 weights train as fp32 master weights (``loop.compute_dtype_for``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.collate import Encoder
from ..data.collate import collate as collate_examples
from ..data.items import Benchmark, Item
from ..models.base import VLM
from ..training.loop import LoraOptions, TrainConfig, train
from ..training.losses import answer_token_nll
from ..utils import check_training_numbers
from .inject import InjectionConfig, builtin_curriculum, history_warnings, loss_flat_warning, stage_note, warn

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

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "max_steps") if getattr(self, k) is not None}
        check_training_numbers("FinetuneConfig", **given)
        for name in ("save_every", "stop_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"FinetuneConfig.{name} must be a number of steps >= 1 (or None), got {value}")


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


def finetune_items(benchmark: Benchmark, retain_only: bool) -> tuple[Benchmark, list[Item]]:
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
    trained_on, items = finetune_items(benchmark, cfg.retain_only)
    record: dict[str, Any] = {"recipe": recipe.to_dict(), "retain_only": cfg.retain_only,
                              "forget_ids": sorted(benchmark.forget_ids) if cfg.retain_only else None,
                              "data": {"benchmark": benchmark.name, "items": len(items), "hash": data_hash(items)}}
    if recipe.name == "builtin":
        history = builtin_curriculum(vlm, trained_on, recipe.injection, progress=cfg.progress)
        record["history"] = history
        record["steps"] = sum(stage.get("steps", 0) for stage in history.values())
        record["loss_curve"] = {name: stage.get("losses", []) for name, stage in history.items()}
        record["warnings"] = history_warnings(history)
        return record
    if not items:
        raise ValueError(f"benchmark {trained_on.name} has no fine-tuning items (ft_Data / the training config)")
    name = f"finetune ({recipe.name}{', retain only' if cfg.retain_only else ''})"
    stage_note(f"{name}: training on {len(items)} items, {recipe.epochs} epochs"
               + (f", at most {recipe.max_steps} steps" if recipe.max_steps else ""))
    result = train(vlm.model, items, _collate(vlm, recipe.loss_on), _token_mean_loss, _train_config(recipe, cfg, checkpoint_dir),
                   description=name, merge_lora=merge_lora, shard_units=vlm.adapter.shard_units)
    record.update(steps=result.steps, loss_curve=result.losses, warnings=loss_flat_warning(name, result.losses))
    if result.losses:
        stage_note(f"{name}: done, {result.steps} steps, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    for message in record["warnings"]:
        warn(message)
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


def inject_knowledge(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train ``vlm`` in place on the benchmark's training data; returns the loss history.

    The ``builtin`` recipe of ``finetune`` (the curriculum of ``recipes/inject.py``)."""
    cfg = cfg or InjectionConfig()
    return finetune(vlm, benchmark, FinetuneConfig(recipe="builtin", injection=cfg, seed=cfg.seed,
                                                   progress=progress))["history"]
