"""Relearning attack: does forgotten knowledge come back after a few fine-tuning steps?

The unlearned model (the edit baked into the caller's model in place, as an attacker holding
the released weights would have it) is fine-tuned through the shared training loop on
the training items of a few forget people (and multiple-choice versions of them), and
classification accuracy is measured on the *other* forget people's questions every
``eval_every`` steps. Knowledge that was erased must
be relearned item by item; knowledge that was only hidden comes back for people the attack
never showed (Lynch et al. 2024; Hu et al. 2025, "jogging the memory").

No copy of the model is made (a 7B copy plus its optimizer would not fit beside it): the edit
is baked into the caller's model in place, the weights it writes kept on CPU first; with LoRA
the attack trains adapters on top and removes them unmerged; with full fine-tuning every weight
is kept on CPU. All of it is copied back at the end: the caller's model is bitwise as before,
also when the attack fails midway.

A rise can also come from restoring a skill unlearning damaged (answering in the letter
format, say); the curve therefore also tracks the same accuracy on a sample of retain people,
whose knowledge the attack neither shows nor (ideally) needed to restore. As a positive
control it tracks the forget people the attack trains on too: if their accuracy does not rise,
the attack was too weak to tell erased from hidden knowledge.
"""
from __future__ import annotations

import dataclasses
import random
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Benchmark, Item
from ..data.prompts import McqRenderer
from ..interventions import WeightDelta
from ..models.base import VLM
from ..training.loop import LoraOptions, TrainConfig, train
from ..training.losses import sequence_nll
from .evaluator import EvalConfig, Evaluator

AUTO = "auto"
FULL_FINETUNE_LR = 1e-3  # the tiny models' attack (the figures in docs/results.md)
# LoRA adapters start at zero and move the weights less per step than full fine-tuning: the
# common LoRA fine-tuning rate for 7B models; the positive control says if it was too weak.
LORA_LR = 1e-4
DEFAULT_LORA_RANK = 16


class RelearnNotApplicable(ValueError):
    """The benchmark cannot support the attack (too few forget people with the measured task)."""


def resolve_relearn(cfg: RelearnConfig, model_built_here: bool) -> RelearnConfig:
    """``cfg`` with ``lora="auto"`` and ``lr=None`` made concrete: full fine-tuning (lr 1e-3, as
    the tiny figures were measured) on models this tool built, LoRA (rank 16, lr 1e-4) otherwise."""
    lora = cfg.lora
    if lora == AUTO:
        lora = None if model_built_here else LoraOptions(r=DEFAULT_LORA_RANK, alpha=DEFAULT_LORA_RANK)
    lr = cfg.lr if cfg.lr is not None else (FULL_FINETUNE_LR if lora is None else LORA_LR)
    checkpointing = cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else not model_built_here
    return dataclasses.replace(cfg, lora=lora, lr=lr, gradient_checkpointing=checkpointing)


@dataclass
class RelearnConfig:
    fraction: float = 0.2  # share of the forget people whose training items the attack sees
    steps: int = 20
    eval_every: int = 5
    lr: float | None = None  # None: FULL_FINETUNE_LR, or LORA_LR with LoRA
    batch_size: int = 8
    # Multiple-choice versions of each shown item added to the attack's data (fresh options each;
    # items need Attribute/Value metadata, as the built-in world's have). Trained on the open
    # answers alone, the default tiny model's shown people regained little classification
    # accuracy (55 -> 65% after GA, even with the training loss at 0): an attack without power.
    mcq_renderings: int = 2
    task: str = "mcq"  # the accuracy measured: mcq or cloze
    max_eval_items: int | None = None  # per modality and side (held-out forget / retain control)
    seed: int = 0
    # Relearn through LoRA adapters (what a large model needs) or, None, full fine-tuning;
    # "auto" is resolved by the caller (pipeline: LoRA on models this tool did not build).
    lora: LoraOptions | None | str = AUTO
    # None: resolved by ``resolve_relearn`` (on for models this tool did not build, as unlearning).
    gradient_checkpointing: bool | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"relearn fraction must lie in (0, 1), got {self.fraction}")
        for name in ("steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"RelearnConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.mcq_renderings < 0:
            raise ValueError(f"relearn mcq_renderings must be >= 0, got {self.mcq_renderings}")
        if isinstance(self.lora, str) and self.lora != AUTO:
            raise ValueError(f"relearn lora must be LoraOptions, None (full fine-tuning) or {AUTO!r}, got {self.lora!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"RelearnConfig.lr must be > 0, got {self.lr}")
        if self.task not in ("mcq", "cloze"):
            raise ValueError(f"relearn task must be mcq or cloze (accuracy tasks), got {self.task!r}")


def split_forget_people(benchmark: Benchmark, cfg: RelearnConfig) -> tuple[list[str], list[str]]:
    """(people the attack trains on, people it is measured on): seeded, disjoint, both non-empty."""
    trained = {i.person_id for i in benchmark.forget_train}
    asked = {i.person_id for i in benchmark.eval_splits.get("forget", []) if i.task == cfg.task}
    people = sorted(trained & asked)
    if len(people) < 2:
        raise RelearnNotApplicable(f"the relearning attack needs at least 2 forget people with training items and {cfg.task} "
                         f"questions; {benchmark.name} has {len(people)}")
    count = min(len(people) - 1, max(1, round(len(people) * cfg.fraction)))
    shown = sorted(random.Random(f"{cfg.seed}:relearn").sample(people, count))
    return shown, [p for p in people if p not in shown]


def _accuracy(evaluator: Evaluator, items_by_modality: dict[str, list[Item]], task: str) -> dict[str, float]:
    out, correct, total = {}, 0, 0
    for modality, items in items_by_modality.items():
        records = evaluator.score_group(items, task)
        hits = sum(bool(r["correct"]) for r in records)
        out[modality] = 100.0 * hits / len(records)
        correct, total = correct + hits, total + len(records)
    out["all"] = 100.0 * correct / total
    return out


def _eval_items(items: Sequence[Item], people: set[str] | None, task: str, limit: int | None,
                seed: str) -> dict[str, list[Item]]:
    out = {}
    for modality in ("vqa", "qa"):
        group = [i for i in items if i.task == task and i.modality == modality and (people is None or i.person_id in people)]
        if limit is not None and len(group) > limit:
            group = random.Random(f"{seed}:{modality}").sample(group, limit)
        if group:
            out[modality] = group
    return out


def _parameters_baked_by(edit: Any, model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters ``edit.bake`` writes: a weight edit's named tensors (stored whole or as rows
    or columns), a neuron mask's down projections, a LoRA edit's adapted weights, the union for a
    composite edit; every parameter for a kind not known here."""
    from ..interventions.neuron_mask import NeuronMask, site_modules

    if hasattr(edit, "parts"):
        found = {id(p): p for part in edit.parts for p in _parameters_baked_by(part, model)}
        return list(found.values())
    if isinstance(edit, NeuronMask):
        return [module.weight for module in site_modules(model, list(edit.indices)).values()]
    from ..interventions.low_rank import LowRankDelta

    if isinstance(edit, LowRankDelta):
        modules = dict(model.named_modules())
        return [modules[path].weight for path in edit.factors if path in modules]
    if isinstance(edit, WeightDelta):
        params = dict(model.named_parameters())
        return [params[name] for name in edit.names if name in params]  # whole tensors and row/column slices
    return list(model.parameters())


@contextmanager
def attacked_model(vlm: VLM, edit: Any, full_finetune: bool) -> Iterator[None]:
    """``edit`` on ``vlm`` in place for an attack that fine-tunes it, undone afterwards: the
    caller's model comes back bitwise unchanged, also when the attack fails.

    The edit is baked into the weights, as an attacker holding the released weights has it (so
    pruned neurons can regrow), or hooked on for a test-time edit (the attacker fine-tunes the
    deployed, steered model and is measured with the steering on). What the attack
    (``full_finetune``: every weight; LoRA: none) or the baking changes is kept on CPU first and
    copied back at the end."""
    hooks = None
    if full_finetune:  # full fine-tuning moves every weight
        saved = list(vlm.model.parameters())
    else:  # LoRA leaves the weights alone: only those the edit bakes into
        saved = _parameters_baked_by(edit, vlm.model) if edit is not None and edit.bakeable else []
    snapshot = [(param, param.detach().to("cpu", copy=True)) for param in saved]
    try:
        if edit is not None and edit.bakeable:
            edit.bake(vlm)
        elif edit is not None:
            hooks = edit.apply(vlm)
        yield
    finally:
        with torch.no_grad():
            for param, value in snapshot:
                param.copy_(value)
        del snapshot
        if hooks is not None:
            hooks.remove()


def fine_tune(vlm: VLM, train_items: Sequence[Item], cfg: RelearnConfig, description: str, stop_check: Any = None,
              check_every: int | None = None) -> Any:
    """``cfg.steps`` steps of answer NLL on ``train_items`` (constant lr ``cfg.lr``, LoRA adapters
    removed unmerged afterwards when ``cfg.lora``): the relearning attacks' training. ``cfg`` resolved."""
    encoder = Encoder(vlm)

    def collate(batch: list[Item]) -> dict[str, torch.Tensor]:
        return {k: v.to(vlm.device) for k, v in encoder.batch(batch, train=True).items()}

    # peft injects the adapters into the model's own modules, so evaluators on ``vlm`` see them.
    train_cfg = TrainConfig(lr=cfg.lr, max_steps=cfg.steps, batch_size=cfg.batch_size, schedule="constant",
                            warmup_ratio=0.0, seed=cfg.seed, lora=cfg.lora, progress=cfg.progress,
                            gradient_checkpointing=bool(cfg.gradient_checkpointing))
    kwargs = {"stop_check": stop_check, "check_every": check_every} if stop_check is not None else {}
    return train(vlm.model, list(train_items), collate, lambda model, batch: sequence_nll(model, batch).mean(),
                 train_cfg, description=description, device=vlm.device, merge_lora=False, **kwargs)


def relearn_attack(vlm: VLM, benchmark: Benchmark, edit: Any, cfg: RelearnConfig | None = None) -> dict[str, Any]:
    """Accuracy on the unseen forget people (and retain control) over relearning steps.

    ``edit`` (None: attack the model as it is) is baked into ``vlm`` in place (a test-time edit:
    hooked on) for the attack and undone afterwards: the caller's model comes back bitwise
    unchanged. ``cfg.lora`` "auto" or ``cfg.lr`` None resolve as on a model this tool built
    (``resolve_relearn``). Returns the curve, the vanilla accuracy on the same questions, and
    the share of the forgotten accuracy that came back."""
    cfg = resolve_relearn(cfg or RelearnConfig(), model_built_here=True)
    shown, measured = split_forget_people(benchmark, cfg)
    forget_items = _eval_items(benchmark.eval_splits["forget"], set(measured), cfg.task, cfg.max_eval_items,
                               f"{cfg.seed}:forget")
    retain_items = _eval_items(benchmark.eval_splits.get("retain", []), None, cfg.task,
                               cfg.max_eval_items or max(len(v) for v in forget_items.values()), f"{cfg.seed}:retain")
    shown_items = _eval_items(benchmark.eval_splits["forget"], set(shown), cfg.task, cfg.max_eval_items,
                              f"{cfg.seed}:shown")
    train_items = [i for i in benchmark.forget_train if i.person_id in set(shown)]
    if cfg.mcq_renderings:
        renderer = McqRenderer(list(benchmark.forget_train) + list(benchmark.retain_train), cfg.seed)
        train_items += [renderer(i) for _ in range(cfg.mcq_renderings) for i in train_items if renderer.renderable(i)]
    eval_cfg = EvalConfig(scorer="likelihood", batch_size=32, progress=False, seed=cfg.seed)

    vanilla = _accuracy(Evaluator(vlm, eval_cfg), forget_items, cfg.task)
    with attacked_model(vlm, edit, full_finetune=cfg.lora is None):
        evaluator = Evaluator(vlm, eval_cfg)
        steps: list[int] = [0]
        forget_curve = [_accuracy(evaluator, forget_items, cfg.task)]
        retain_curve = [_accuracy(evaluator, retain_items, cfg.task)] if retain_items else []
        shown_curve = [_accuracy(evaluator, shown_items, cfg.task)] if shown_items else []

        def record(step: int) -> bool:
            steps.append(step)
            forget_curve.append(_accuracy(evaluator, forget_items, cfg.task))
            if retain_items:
                retain_curve.append(_accuracy(evaluator, retain_items, cfg.task))
            if shown_items:
                shown_curve.append(_accuracy(evaluator, shown_items, cfg.task))
            return False

        result = fine_tune(vlm, train_items, cfg, "relearning attack", stop_check=record, check_every=cfg.eval_every)
        if steps[-1] != result.steps:
            record(result.steps)
    before, after = forget_curve[0], forget_curve[-1]
    recovered = {m: (after[m] - before[m]) / (vanilla[m] - before[m]) if vanilla[m] - before[m] > 1e-9 else None
                 for m in vanilla}
    return {
        "config": asdict(cfg),
        "people": {"shown": shown, "measured": measured},
        "counts": {"train_items": len(train_items), **{f"forget_{m}": len(v) for m, v in forget_items.items()},
                   **{f"retain_{m}": len(v) for m, v in retain_items.items()},
                   **{f"shown_{m}": len(v) for m, v in shown_items.items()}},
        "edit_mode": None if edit is None else ("baked" if edit.bakeable else "applied as hooks"),
        "fine_tuning": "full" if cfg.lora is None else f"LoRA rank {cfg.lora.r}",
        "steps": steps,
        "forget_accuracy": forget_curve,  # per step: {"vqa", "qa", "all"} on the people never shown
        "retain_accuracy": retain_curve,  # the control
        "shown_accuracy": shown_curve,  # positive control: the forget people the attack trains on
        "vanilla_forget_accuracy": vanilla,
        "recovered_fraction": recovered,  # (final − unlearned) / (vanilla − unlearned); None if nothing was forgotten
        "train_losses": result.losses,
    }
