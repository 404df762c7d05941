"""Knowledge injection: teach a model the benchmark's people (MLLMU-Bench's "vanilla" model).

Two stages: the real-world people first (prior knowledge, from ``pretrain_Data`` when the
benchmark has it), then the fictitious people with replay of the first stage. Besides the
open QA pairs, multiple-choice renderings of the same facts are trained (options drawn
from the same attribute) so a model trained from scratch can answer MLLMU-Bench's
letter-format questions; real checkpoints already can, and may switch this off.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..data.collate import Encoder
from ..data.collate import collate as collate_examples
from ..data.items import OPTION_KEYS, Benchmark, Item
from ..models.base import VLM
from .loop import LoraOptions, TrainConfig, train
from .losses import sequence_nll


@dataclass
class InjectionConfig:
    lr: float = 1e-3
    batch_size: int = 16
    # Stage 0: the multiple-choice letter skill, learned on a few people first. Trained from
    # scratch on 30+ people at once, the skill emerges late or not at all (recall and option
    # matching must both work before the letter gets any signal); on ~8 people it emerges in
    # a few hundred steps and then carries over to new people. The stage stops once MCQ
    # accuracy on fresh renderings of its people reaches ``skill_target`` (or at the step cap).
    skill_people: int = 8
    skill_max_steps: int = 2000
    skill_target: float = 0.9
    skill_check_every: int = 100
    pretrain_epochs: int = 48
    finetune_epochs: int = 72
    # How many copies of each training pair go into each stage's sampling pool, per form:
    # "qa" (open question, MLLMU-Bench's ft_Data as is), "mcq" (a multiple-choice rendering
    # with options drawn afresh each time) and "context-mcq" (the same, with the answer
    # sentence stated before the question: it exercises option matching on its own).
    # Real checkpoints already answer multiple-choice questions and may use {"qa": 1} alone.
    pretrain_forms: dict[str, int] = field(default_factory=lambda: {"qa": 1, "mcq": 1, "context-mcq": 1})
    finetune_forms: dict[str, int] = field(default_factory=lambda: {"qa": 1, "mcq": 2, "context-mcq": 0})
    # Copies per modality, on top of the form weights (identity from a portrait is learned
    # more slowly than from a name).
    modality_weights: dict[str, int] = field(default_factory=lambda: {"vqa": 1, "qa": 1})
    # "Who is the person in this image?" -> name, copies per person with a portrait and a known
    # name (0 = off). It ties a portrait to the name, through which the text facts are reached.
    identity_copies: int = 0
    # Probability that a training portrait is re-drawn with noise, a lighting change or a mirror
    # flip: the invariance a pretrained vision encoder would bring (0 = off).
    image_augment: float = 0.0
    # Probability that an open-QA draw is asked in MLLMU-Bench's other evaluation formats: with
    # the generation instruction appended (same answer sentence), or as the fill-in-the-blank
    # statement (the fact's value replaced by [Blank]; answer: the value). Same fact, same share
    # of draws; a model trained from scratch otherwise never sees these instructions and answers
    # them with an empty string (cloze 0-4%; generation by luck). Off by default: with 60 stage-2
    # epochs, 0.25 each (CLI --task-formats 0.25) made generation and cloze work (ROUGE-L
    # 0.93-1.0, cloze 61-99%) but VQA classification fell to 90 / 81.6 / 73.3 on forget /
    # retain / real-world, and 0.1 each to 66 / 68.4 / 68 (README).
    qa_task_forms: dict[str, float] = field(default_factory=dict)
    replay_fraction: float = 0.25  # share of stage-2 samples drawn from stage-1 data
    warmup_ratio: float = 0.05
    seed: int = 0
    lora: LoraOptions | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FORMS = ("qa", "mcq", "context-mcq")
IDENTITY_QUESTION = "Who is the person in this image?"
SKILL_FORMS = {"qa": 1, "mcq": 1, "context-mcq": 1}


class McqRenderer:
    """Multiple-choice versions of QA items that carry ``Attribute``/``Value`` metadata.

    Options and their order are drawn afresh every time an item is rendered: a fixed
    rendering would be memorised (question + option order -> letter) instead of the fact.
    """

    def __init__(self, items: Sequence[Item], seed: int):
        self.rng = random.Random(seed)
        self.pools: dict[str, list[str]] = {}
        for item in items:
            if "Attribute" in item.meta:
                self.pools.setdefault(item.meta["Attribute"], set()).add(item.meta["Value"])  # type: ignore[arg-type]
        self.pools = {k: sorted(v) for k, v in self.pools.items()}

    def renderable(self, item: Item) -> bool:
        return len(self.pools.get(item.meta.get("Attribute", ""), ())) >= 4

    def __call__(self, item: Item, with_context: bool = False) -> Item:
        value = item.meta["Value"]
        others = [v for v in self.pools[item.meta["Attribute"]] if v != value]
        options = [value] + self.rng.sample(others, 3)
        self.rng.shuffle(options)
        question = f"{item.answer} {item.question}" if with_context else item.question
        return Item(item.person_id, item.split, item.modality, "mcq", question, OPTION_KEYS[options.index(value)],
                    item.image, dict(zip(OPTION_KEYS, options)), item.image_key, dict(item.meta))


QA_TASK_FORMS = ("generation", "cloze")


def as_task_prompt(item: Item, task: str) -> Item | None:
    """``item`` (an open QA pair) asked in evaluation format ``task``; None if it cannot be
    (cloze needs the fact's ``Value`` inside the answer sentence)."""
    from ..data.synthetic import CLOZE_INSTRUCTION, GENERATION_INSTRUCTION

    if task == "generation":
        return replace(item, question=f"{item.question}\n{GENERATION_INSTRUCTION}")
    value = str(item.meta.get("Value", ""))
    if not value or value not in item.answer:
        return None
    statement = item.answer.replace(value, "[Blank]", 1)
    return replace(item, question=f"{statement}\n{CLOZE_INSTRUCTION}", answer=value)


def injection_texts(cfg: InjectionConfig) -> list[str]:
    """Texts the injection adds beyond the benchmark's (a tiny tokenizer must know their words)."""
    return [IDENTITY_QUESTION, "This is ."] if cfg.identity_copies else []


def identity_items(items: Sequence[Item], names: dict[str, str], copies: int) -> list[Item]:
    """``copies`` "who is this" items per person of ``items`` who has a portrait and a known name."""
    portraits = {i.person_id: i for i in items if i.image is not None}
    out = []
    for pid, source in sorted(portraits.items()):
        if pid in names:
            out += [Item(pid, source.split, "vqa", "train", IDENTITY_QUESTION, f"This is {names[pid]}.", source.image, None,
                         source.image_key, {"Attribute": "name", "Value": names[pid]})] * copies
    return out


def augment_portrait(image: Any, rng: random.Random) -> Any:
    """Noise, and with probability 1/3 each a lighting change or a mirror flip (identity preserved)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32))
    choice = rng.randrange(3)
    if choice == 1:
        pixels = pixels * rng.uniform(0.75, 0.95) + noise.uniform(-12, 12, size=3)
    elif choice == 2:
        pixels = pixels[:, ::-1]
    pixels = pixels + noise.normal(0, rng.uniform(4, 16), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _facts(items: Sequence[Item]) -> int:
    """Distinct facts: phrasings of one fact (same ``Attribute``, or same ``fact`` key, e.g. one
    caption asked with several instructions) count once, so an epoch's length follows the knowledge."""
    return len({(i.person_id, i.modality, i.meta.get("fact", i.meta.get("Attribute", i.question))) for i in items})


def inject_knowledge(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train ``vlm`` in place on the benchmark's training data; returns the loss history."""
    cfg = cfg or InjectionConfig()
    encoder = Encoder(vlm)

    names = benchmark.meta.get("names", {}) if cfg.identity_copies else {}
    pretrain_items = list(benchmark.pretrain_train) + identity_items(benchmark.pretrain_train, names, cfg.identity_copies)
    finetune_items = list(benchmark.finetune_train) + identity_items(benchmark.finetune_train, names, cfg.identity_copies)
    renderer = McqRenderer(pretrain_items + finetune_items, cfg.seed)
    augment_rng = random.Random(cfg.seed + 13)
    unknown = set(cfg.qa_task_forms) - set(QA_TASK_FORMS)
    if unknown or sum(cfg.qa_task_forms.values()) > 1 or any(p < 0 for p in cfg.qa_task_forms.values()):
        raise ValueError(f"qa_task_forms: keys must be in {QA_TASK_FORMS} and probabilities >= 0 summing to <= 1, "
                         f"got {cfg.qa_task_forms}")
    task_rng = random.Random(cfg.seed + 29)

    def open_qa(item: Item) -> Item:
        draw = task_rng.random()
        for task, probability in sorted(cfg.qa_task_forms.items()):
            if draw < probability:
                return as_task_prompt(item, task) or item
            draw -= probability
        return item
    # Augmented portraits are new objects every time: encoded without the prompt cache.
    uncached = Encoder(vlm, cache_size=0)

    def collate(batch: list[tuple[str, Item]]) -> dict:
        items = [open_qa(item) if form == "qa" else renderer(item, with_context=form == "context-mcq") for form, item in batch]
        augmented = []
        for k, item in enumerate(items):  # one item at a time: the draws' order is part of the seed's result
            fresh = item.image is not None and bool(cfg.image_augment) and augment_rng.random() < cfg.image_augment
            if fresh:
                items[k] = replace(item, image=augment_portrait(item.image, augment_rng))
            augmented.append(fresh)
        # Each group's prompts are encoded in one processor call, then put back in batch order.
        fresh = [k for k, augment in enumerate(augmented) if augment]
        kept = [k for k, augment in enumerate(augmented) if not augment]
        prompts = dict(zip(fresh, uncached.prompts([items[k] for k in fresh])))
        prompts.update(zip(kept, encoder.prompts([items[k] for k in kept])))
        examples = [encoder.training_example(item, prompts[k]) for k, item in enumerate(items)]
        return {k: v.to(vlm.device) for k, v in collate_examples(examples, encoder.pad_id).items()}

    def pool_of(items: Sequence[Item], forms: dict[str, int]) -> list[tuple[str, Item]]:
        unknown = set(forms) - set(FORMS)
        if unknown:
            raise ValueError(f"injection forms {sorted(unknown)} are unknown; forms are {FORMS}")
        items = [i for i in items for _ in range(cfg.modality_weights.get(i.modality, 1))]
        renderable = [i for i in items if renderer.renderable(i)]
        pool = [("qa", i) for i in items] * forms.get("qa", 0)
        for form in ("mcq", "context-mcq"):
            pool += [(form, i) for i in renderable] * forms.get(form, 0)
        return pool

    def loss(model: Any, batch: dict) -> Any:
        return sequence_nll(model, batch).mean()

    history: dict[str, Any] = {}
    if cfg.skill_people > 0 and (cfg.pretrain_forms.get("mcq") or cfg.finetune_forms.get("mcq")):
        history["skill (multiple choice, few people)"] = _skill_stage(vlm, benchmark, cfg, renderer, collate, pool_of,
                                                                       loss, progress)
    stages = []
    pre = pretrain_items
    pre_pool = pool_of(pre, cfg.pretrain_forms)
    fine = finetune_items
    fine_pool = pool_of(fine, cfg.finetune_forms)
    if pre_pool and cfg.pretrain_epochs:
        stages.append(("pretrain (real-world people)", pre_pool, 2 * _facts(pre), cfg.pretrain_epochs))
    if fine_pool and cfg.finetune_epochs:
        samples = 2 * _facts(fine)
        pool = fine_pool
        if pre_pool and cfg.replay_fraction > 0:
            # Replay keeps stage-1 knowledge: a tiny model would otherwise overwrite it.
            replay = int(len(fine_pool) * cfg.replay_fraction / (1 - cfg.replay_fraction))
            rng = random.Random(cfg.seed)
            pool = fine_pool + [pre_pool[rng.randrange(len(pre_pool))] for _ in range(replay)]
            samples = int(samples / (1 - cfg.replay_fraction))
        stages.append(("finetune (benchmark people)", pool, samples, cfg.finetune_epochs))
    for index, (name, pool, samples, epochs) in enumerate(stages):
        train_cfg = TrainConfig(lr=cfg.lr, epochs=epochs, samples_per_epoch=samples, batch_size=cfg.batch_size,
                                warmup_ratio=cfg.warmup_ratio, seed=cfg.seed + index, lora=cfg.lora, progress=progress)
        result = train(vlm.model, pool, collate, loss, train_cfg, description=f"inject: {name}")
        history[name] = {"steps": result.steps, "first_loss": result.losses[0], "last_loss": result.losses[-1]}
    return history


def _skill_stage(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig, renderer: McqRenderer, collate: Any,
                 pool_of: Any, loss: Any, progress: bool) -> dict[str, Any]:
    import torch

    from ..eval.evaluator import EvalConfig, Evaluator

    source = list(benchmark.pretrain_train) or list(benchmark.finetune_train)
    people = sorted({i.person_id for i in source})[: cfg.skill_people]
    items = [i for i in source if i.person_id in set(people) and renderer.renderable(i)]
    if not items:
        return {"steps": 0, "skipped": "no multiple-choice-renderable items"}
    pool = pool_of(items, SKILL_FORMS)
    probe_rng = random.Random(cfg.seed + 7)
    probe = [renderer(i) for i in probe_rng.sample(items, min(len(items), 160))]
    evaluator = Evaluator(vlm, EvalConfig(progress=False))
    accuracies: list[tuple[int, float]] = []

    def reached(step: int) -> bool:
        with torch.no_grad():
            records = evaluator.score_group(probe, "mcq")
        accuracies.append((step, sum(r["correct"] for r in records) / len(records)))
        return accuracies[-1][1] >= cfg.skill_target

    train_cfg = TrainConfig(lr=cfg.lr, max_steps=cfg.skill_max_steps, batch_size=cfg.batch_size, schedule="constant",
                            warmup_ratio=cfg.warmup_ratio, seed=cfg.seed + 100, lora=cfg.lora, progress=progress)
    result = train(vlm.model, pool, collate, loss, train_cfg, description="inject: multiple-choice skill",
                   stop_check=reached, check_every=cfg.skill_check_every)
    return {"steps": result.steps, "people": len(people), "first_loss": result.losses[0],
            "last_loss": result.losses[-1], "mcq_accuracy": accuracies}


def injection_cache_key(family: str, size: dict[str, Any], benchmark_key: str, cfg: InjectionConfig) -> str:
    from ..utils import stable_hash

    settings = cfg.to_dict()
    # Options added later are left out of the key while off, so models trained before they
    # existed (identically) stay valid cache entries.
    for option in ("identity_copies", "image_augment", "qa_task_forms"):
        if not settings[option]:
            del settings[option]
    return stable_hash({"family": family, "size": size, "benchmark": benchmark_key, "injection": settings, "format": 1})


INJECTION_META = "injection.json"  # beside a vanilla model's weights: how it was trained, and on what


def injection_meta_text(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, default=str)
