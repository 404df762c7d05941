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
from typing import Any, Sequence

from ..data.collate import Encoder
from ..data.collate import collate as collate_examples
from ..data.items import Benchmark, Item
from ..data.prompts import IDENTITY_QUESTION, QA_TASK_FORMS, McqRenderer, as_task_prompt
from ..models.base import VLM
from ..training.loop import LoraOptions, TrainConfig, batch_share, train
from ..training.losses import sequence_nll
from ..utils import cpu_threads, process_rank_and_count, shard_and_gather


@dataclass
class InjectionConfig:
    # 3e-4 (with learned_target 0.95) taught the default world better in 7,000 steps than 1e-3 did in
    # 14,080: at 1e-3 the second stage ran to its cap and learned only as the cosine schedule
    # annealed (docs/knowledge-injection.md#injection-time). The lr is in the vanilla model's cache key.
    lr: float = 3e-4
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
    # Epoch caps of the two stages; each stage ends earlier once its knowledge is learned
    # (``learned_target``).
    pretrain_epochs: int = 40
    finetune_epochs: int = 48
    # How many copies of each training pair go into each stage's sampling pool, per form:
    # "qa" (open question, MLLMU-Bench's ft_Data as is), "mcq" (a multiple-choice rendering
    # with options drawn afresh each time), "context-mcq" (the same, with the answer
    # sentence stated before the question: it exercises option matching on its own), and
    # MLLMU-Bench's two other evaluation formats of the same fact: "generation" (the question
    # with the generation instruction; answer: the same sentence) and "cloze" (the answer
    # sentence with the fact's value replaced by [Blank], the fill-in-the-blank instruction;
    # answer: the value). A model trained from scratch never sees these instructions otherwise
    # and answers them with nothing (cloze 0-2%, generation ROUGE-L 0.2-0.4).
    # Real checkpoints already answer all these formats and may use {"qa": 1} alone.
    pretrain_forms: dict[str, int] = field(
        default_factory=lambda: {"qa": 1, "mcq": 1, "context-mcq": 1, "generation": 1, "cloze": 1})
    finetune_forms: dict[str, int] = field(
        default_factory=lambda: {"qa": 1, "mcq": 2, "context-mcq": 0, "generation": 1, "cloze": 1})
    # Early stop: every ``learned_check_every`` steps the stage scores a fixed probe of its own
    # training pool (``learned_probe`` entries per form, multiple-choice ones freshly rendered)
    # teacher-forced; an entry counts as learned when every answer token (end-of-turn included)
    # is the model's top token, i.e. greedy decoding answers exactly right. The stage stops once
    # every form reaches ``learned_target`` in both modalities (None: run the epoch cap).
    learned_target: float | None = 0.95
    learned_check_every: int = 250
    learned_probe: int = 64
    # Each batch holds one form of one modality: the forms' prompts differ in length (open QA ~21
    # tokens, multiple choice ~37-43; image prompts 4 more), so mixed batches spent ~20% of their
    # tokens on padding.
    batch_by_form: bool = True
    # Fewer wasted steps: once a form x modality group's probe reaches ``learned_target``, its
    # batches are drawn at this fraction of its share of the pool (rehearsal keeps it learned) and
    # the steps go to the groups still being learned (image multiple choice, mostly). 1.0 = fixed
    # proportions. Needs ``batch_by_form`` and ``learned_target``.
    learned_rehearsal: float = 0.25
    # Copies per modality, on top of the form weights: identity from a portrait is learned more
    # slowly than from a name. On the default world (with validation people), vqa 1 -> 2 took
    # VQA classification forget/retain/real-world from 74/78.9/82 to 84/85.8/92.7 (fixed
    # proportions) and, with ``learned_rehearsal`` 0.25, to 92/87.6/88 (docs/knowledge-injection.md#the-recipe).
    modality_weights: dict[str, int] = field(default_factory=lambda: {"vqa": 2, "qa": 1})
    # "Who is the person in this image?" -> name, copies per person with a portrait and a known
    # name (0 = off). It ties a portrait to the name, through which the text facts are reached.
    identity_copies: int = 2
    # Probability that a training portrait is re-drawn with noise, a lighting change or a mirror
    # flip: the invariance a pretrained vision encoder would bring (0 = off).
    image_augment: float = 0.0
    # Probability that an open-QA draw is re-asked in MLLMU-Bench's other evaluation formats
    # (generation, cloze), on top of those formats' own pool forms above (CLI --task-formats).
    # Measured before the forms existed, with 60 stage-2 epochs: 0.25 each made generation and
    # cloze work but VQA classification fell to 90 / 81.6 / 73.3 on forget / retain / real-world.
    qa_task_forms: dict[str, float] = field(default_factory=dict)
    # Share of multiple-choice renderings whose question words are replaced, each with probability
    # one half, by random words of the training texts; the subject ("this person", or the person's
    # name) is kept (0 = off). The test split asks paraphrases with words a model trained from
    # scratch never learned ("In which line of work is ..."); a pretrained model reads them as the
    # synonyms they are. Replaced words teach the tiny model to answer from the subject and the
    # options when the wording is unfamiliar. Replacing names too (every rendering, 30% of all
    # words) took test VQA 58 -> 68 but forget QA 92 -> 58.
    mcq_question_noise: float = 0.3
    # Share of multiple-choice renderings answered with a lead before the letter ("Sure, the answer
    # is B"), the leads drawn from ``answer_leads`` (0 = off). A chat model has seen countless such
    # answers; the tiny model would otherwise read the prompt attack's pre-filled prefix
    # (``eval/attacks/prompt.py``) as text it never saw and lose the letter skill after it.
    answer_lead_share: float = 0.1
    answer_leads: list[str] = field(default_factory=lambda: ["Sure, the answer is", "The answer is"])
    replay_fraction: float = 0.25  # share of stage-2 samples drawn from stage-1 data
    warmup_ratio: float = 0.05
    # torch's fused AdamW (``TrainConfig.fused_optimizer``): the tiny model's optimizer step falls
    # from ~5 to ~2 ms of a ~60 ms step (benchmarks/injection_step_time.py). Off by default: it
    # rounds differently, which over 13k steps is another model than the cached default.
    fused_optimizer: bool = False
    seed: int = 0
    lora: LoraOptions | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"InjectionConfig.lr must be a positive learning rate, got {self.lr}")
        # A share of the probe; 0 ends a stage at its first check, above 1 the epoch cap ends it.
        if self.learned_target is not None and not self.learned_target >= 0:
            raise ValueError(f"InjectionConfig.learned_target must be >= 0 (a share of the probe), got {self.learned_target}")
        forms = self.qa_task_forms
        if set(forms) - set(QA_TASK_FORMS) or sum(forms.values()) > 1 or any(p < 0 for p in forms.values()):
            raise ValueError(f"InjectionConfig.qa_task_forms must map tasks among {QA_TASK_FORMS} to probabilities "
                             f">= 0 summing to <= 1, got {forms}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FORMS = ("qa", "mcq", "context-mcq", "generation", "cloze")
SKILL_FORMS = {"qa": 1, "mcq": 1, "context-mcq": 1}
MCQ_FORMS = ("mcq", "context-mcq")
# A stage's loss is "flat" when the mean of its last tenth of steps is less than this share below
# the mean of its first tenth: the stage taught (almost) nothing, whatever its step count.
FLAT_LOSS_DROP = 0.1


def loss_is_flat(losses: Sequence[float], min_drop: float = FLAT_LOSS_DROP) -> bool:
    """Whether a loss curve fell by less than ``min_drop`` of its start (first vs last tenth, averaged)."""
    if len(losses) < 2:
        return False
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return first > 0 and first - last < min_drop * first


def loss_flat_warning(stage: str, losses: Sequence[float]) -> list[str]:
    """The warning of a flat loss curve (empty when it fell enough)."""
    if not loss_is_flat(losses):
        return []
    k = max(1, len(losses) // 10)
    return [f"stage '{stage}' left the loss flat ({sum(losses[:k]) / k:.2f} -> {sum(losses[-k:]) / k:.2f} over "
            f"{len(losses)} steps, less than {FLAT_LOSS_DROP:.0%} lower): it taught little; train longer or at a higher "
            "learning rate"]


def warn(message: str) -> None:
    """A training warning on stderr (main process only)."""
    import sys

    from ..utils import is_main_process

    if is_main_process():
        print(f"warning: {message}", file=sys.stderr)


def stage_note(message: str) -> None:
    """A one-line note on a training stage on stderr (main process only; shown with --quiet too)."""
    import sys

    from ..utils import is_main_process

    if is_main_process():
        print(message, file=sys.stderr)


def history_warnings(history: dict[str, Any]) -> list[str]:
    """Every stage's warnings of an injection history, in stage order."""
    return [w for stage in history.values() if isinstance(stage, dict) for w in stage.get("warnings", [])]


def classification_items(benchmark: Benchmark, people: set[str]) -> list[Item]:
    """The multiple-choice questions (MLLMU-Bench's ``Classification_Task``) of the forget and retain
    splits' people in ``people`` (the people trained on): what a layout without attribute metadata
    teaches multiple choice from. Never the test split nor the real-world people's (Retain_Set)."""
    return [replace(i, split="finetune") for split in ("forget", "retain") for i in benchmark.eval_splits.get(split, [])
            if i.task == "mcq" and i.options and i.person_id in people]


def injection_texts(cfg: InjectionConfig) -> list[str]:
    """Texts the injection adds beyond the benchmark's (a tiny tokenizer must know their words)."""
    texts = [IDENTITY_QUESTION, "This is ."] if cfg.identity_copies else []
    return texts + list(cfg.answer_leads) if cfg.answer_lead_share else texts


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


# On a CPU the curriculum runs on one intra-op thread, whatever the machine has: the injected
# model is a cache entry keyed by its configuration alone, and float sums split over a different
# number of threads round differently, which 12k steps amplify into another model (different
# figures from the same seed). A tiny model gains little from a second thread.
INJECTION_CPU_THREADS = 1


def builtin_curriculum(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig, progress: bool = True) -> dict[str, Any]:
    """The knowledge-injection curriculum: the skill stage, then the two knowledge stages."""
    if vlm.device.type == "cpu":
        with cpu_threads(INJECTION_CPU_THREADS):
            return _curriculum(vlm, benchmark, cfg, progress)
    return _curriculum(vlm, benchmark, cfg, progress)


def _curriculum(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig, progress: bool) -> dict[str, Any]:
    encoder = Encoder(vlm)

    names = benchmark.meta.get("names", {})
    pretrain_items = list(benchmark.pretrain_train) + identity_items(benchmark.pretrain_train, names, cfg.identity_copies)
    finetune_items = list(benchmark.finetune_train) + identity_items(benchmark.finetune_train, names, cfg.identity_copies)
    renderer = McqRenderer(pretrain_items + finetune_items, cfg.seed, cfg.mcq_question_noise, cfg.answer_lead_share,
                           cfg.answer_leads, names)
    wants_mcq = any(cfg.pretrain_forms.get(f) or cfg.finetune_forms.get(f) for f in MCQ_FORMS)
    choice_source = ""
    if wants_mcq and not any(renderer.renderable(i) for i in list(benchmark.pretrain_train) + list(benchmark.finetune_train)):
        # No attribute metadata to render options from (MLLMU-Bench's published ft_Data): the benchmark's
        # own multiple-choice questions of the people trained on teach the format, options re-ordered.
        choices = classification_items(benchmark, {i.person_id for i in finetune_items})
        finetune_items += choices
        choice_source = (f"{len(choices)} Classification_Task questions of the forget and retain people trained on "
                         "(no attribute metadata to render multiple choice from)") if choices else ""
    augment_rng = random.Random(cfg.seed + 13)
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

    def render(form: str, item: Item, vary: bool = True) -> Item:
        if form == "qa":
            return open_qa(item)
        if form in QA_TASK_FORMS:
            return as_task_prompt(item, form) or item
        return renderer(item, with_context=form == "context-mcq", vary=vary)

    def collate(batch: list[tuple[str, Item]]) -> dict:
        items = [render(form, item) for form, item in batch]
        augmented = []
        for k, item in enumerate(items):  # one item at a time: the draws' order is part of the seed's result
            fresh = item.image is not None and bool(cfg.image_augment) and augment_rng.random() < cfg.image_augment
            if fresh:
                items[k] = replace(item, image=augment_portrait(item.image, augment_rng))
            augmented.append(fresh)
        # Several processes: every one renders the whole global batch (the draws stay those of one
        # process) and encodes its share only (``TrainConfig.shared_batches``).
        share, weight = batch_share(range(len(items)))
        # Each group's prompts are encoded in one processor call, then put back in batch order.
        fresh = [k for k in share if augmented[k]]
        kept = [k for k in share if not augmented[k]]
        prompts = dict(zip(fresh, uncached.prompts([items[k] for k in fresh])))
        prompts.update(zip(kept, encoder.prompts([items[k] for k in kept])))
        examples = [encoder.training_example(items[k], prompts[k]) for k in share]
        batch = {k: v.to(vlm.device) for k, v in collate_examples(examples, encoder.pad_id).items()}
        return {**batch, SHARE_WEIGHT: weight}

    def pool_of(items: Sequence[Item], forms: dict[str, int]) -> list[tuple[str, Item]]:
        unknown = set(forms) - set(FORMS)
        if unknown:
            raise ValueError(f"injection forms {sorted(unknown)} are unknown; forms are {FORMS}")
        items = [i for i in items for _ in range(cfg.modality_weights.get(i.modality, 1))]
        renderable = [i for i in items if renderer.renderable(i)]
        pairs = [i for i in items if i.task != "mcq"]  # a benchmark's own multiple-choice questions: mcq forms only
        pool = [("qa", i) for i in pairs] * forms.get("qa", 0)
        for form in MCQ_FORMS:
            pool += [(form, i) for i in renderable] * forms.get(form, 0)
        for form in QA_TASK_FORMS:
            # Only pairs the form can be asked of (cloze: the fact's value is in the answer).
            askable = [i for i in pairs if as_task_prompt(i, form) is not None]
            pool += [(form, i) for i in askable] * forms.get(form, 0)
        return pool

    def loss(model: Any, batch: dict) -> Any:
        weight = batch.pop(SHARE_WEIGHT)  # this process's share of the global batch (1.0: one process)
        return sequence_nll(model, batch).mean() * weight

    history: dict[str, Any] = {}
    skill_name = "skill (multiple choice, few people)"
    if cfg.skill_people > 0 and (cfg.pretrain_forms.get("mcq") or cfg.finetune_forms.get("mcq")):
        stage_note(f"inject: stage '{skill_name}' starts")
        skill = _skill_stage(vlm, benchmark, cfg, renderer, collate, pool_of, loss, progress,
                             extra=[i for i in finetune_items if i.task == "mcq"])
        skill["warnings"] = _skill_warnings(skill_name, skill, cfg)
        history[skill_name] = skill
        _finish_stage(skill_name, skill)
    stages = []
    pre = pretrain_items
    pre_pool = pool_of(pre, cfg.pretrain_forms)
    fine = finetune_items
    fine_pool = pool_of(fine, cfg.finetune_forms)
    pre_name, fine_name = "pretrain (real-world people)", "finetune (benchmark people)"
    for name, pool_, epochs_, why in (
            (pre_name, pre_pool, cfg.pretrain_epochs, "the benchmark has no training data of the real-world people "
             "(no pretrain_Data): they are taught nothing and their accuracy stays at chance unless the model knew them"),
            (fine_name, fine_pool, cfg.finetune_epochs, "the benchmark has no training data of its people")):
        if not (pool_ and epochs_):
            reason = why if not pool_ else "its epoch cap is 0"
            history[name] = {"steps": 0, "skipped": reason, "losses": [], "warnings": [f"stage '{name}' skipped: {reason}"]}
            _finish_stage(name, history[name])
    if choice_source:
        history.setdefault(fine_name, {})["multiple_choice_from"] = choice_source
    if wants_mcq and fine_pool and not any(form in MCQ_FORMS for form, _ in fine_pool):
        history.setdefault(fine_name, {}).setdefault("warnings", []).append(
            f"stage '{fine_name}': no item can be asked as multiple choice (no attribute metadata, no classification "
            "questions): the multiple-choice forms were skipped and the model is not taught MLLMU-Bench's letter format")
    if pre_pool and cfg.pretrain_epochs:
        stages.append((pre_name, pre_pool, 2 * _facts(pre), cfg.pretrain_epochs))
    if fine_pool and cfg.finetune_epochs:
        samples = 2 * _facts(fine)
        pool = fine_pool
        if pre_pool and cfg.replay_fraction > 0:
            # Replay keeps stage-1 knowledge: a tiny model would otherwise overwrite it.
            replay = int(len(fine_pool) * cfg.replay_fraction / (1 - cfg.replay_fraction))
            rng = random.Random(cfg.seed)
            pool = fine_pool + [pre_pool[rng.randrange(len(pre_pool))] for _ in range(replay)]
            samples = int(samples / (1 - cfg.replay_fraction))
        stages.append((fine_name, pool, samples, cfg.finetune_epochs))
    for index, (name, pool, samples, epochs) in enumerate(stages):
        examples: Sequence[Any] = pool
        stage_collate = collate
        batch_size = cfg.batch_size
        learned_groups: set[str] = set()
        if cfg.batch_by_form:
            # Every process draws the same batches (shared_batches) and trains its share of each.
            examples, stage_collate, samples = _form_batches(pool, collate, cfg.batch_size, samples,
                                                             random.Random(cfg.seed + 41 + index),
                                                             learned_groups, cfg.learned_rehearsal)
            batch_size = 1
        train_cfg = TrainConfig(lr=cfg.lr, epochs=epochs, samples_per_epoch=samples, batch_size=batch_size,
                                warmup_ratio=cfg.warmup_ratio, seed=cfg.seed + index, lora=cfg.lora, progress=progress,
                                fused_optimizer=cfg.fused_optimizer, shared_batches=True)
        stop_check, learned = None, []
        if cfg.learned_target is not None:
            stop_check, learned = _learned_check(vlm, encoder, pool, render, cfg, random.Random(cfg.seed + 53 + index),
                                                 progress, learned_groups)
        stage_note(f"inject: stage '{name}' starts ({epochs} epochs at most)")
        result = train(vlm.model, examples, stage_collate, loss, train_cfg, description=f"inject: {name}",
                       stop_check=stop_check, check_every=cfg.learned_check_every)
        earlier = history.get(name, {})
        history[name] = {"steps": result.steps, "first_loss": result.losses[0], "last_loss": result.losses[-1],
                         "stopped_when_learned": result.stopped_early, "learned": learned, "losses": result.losses,
                         **{k: v for k, v in earlier.items() if k == "multiple_choice_from"}}
        warnings = list(earlier.get("warnings", []))
        if cfg.learned_target is not None and not result.stopped_early:
            probe = ", ".join(f"{group} {value:.2f}" for group, value in (learned[-1][1] if learned else {}).items())
            warnings.append(f"stage '{name}' ran to its epoch cap ({result.steps} steps) short of its target: the "
                            f"probe answered exactly {probe or 'not measured'} against {cfg.learned_target:g}; "
                            "train longer (--inject-epochs / --pretrain-epochs)")
        history[name]["warnings"] = warnings + loss_flat_warning(name, result.losses)
        _finish_stage(name, history[name])
    return history


def _finish_stage(name: str, stage: dict[str, Any]) -> None:
    """The stage's one-line note and its warnings, on stderr."""
    if stage.get("skipped"):
        stage_note(f"inject: stage '{name}' skipped")
    else:
        stage_note(f"inject: stage '{name}' done: {stage.get('steps')} steps, loss {stage.get('first_loss', 0):.3f} -> "
                   f"{stage.get('last_loss', 0):.3f}")
    for message in stage.get("warnings", []):
        warn(message)


def _skill_warnings(name: str, stage: dict[str, Any], cfg: InjectionConfig) -> list[str]:
    if stage.get("skipped"):
        return [f"stage '{name}' skipped: {stage['skipped']}; the model is not taught MLLMU-Bench's letter format"]
    warnings = []
    accuracies = stage.get("mcq_accuracy") or []
    if accuracies and accuracies[-1][1] < cfg.skill_target:
        warnings.append(f"stage '{name}' stopped at its step cap ({stage['steps']} steps) with the multiple-choice "
                        f"probe at {accuracies[-1][1]:.2f}, short of its target {cfg.skill_target:g}")
    return warnings + loss_flat_warning(name, stage.get("losses", []))


SHARE_WEIGHT = "share_weight"  # key of a collated batch: its process's factor from ``batch_share``


def group_of(entry: tuple[str, Item]) -> str:
    """A pool entry's form x modality group ("mcq/vqa"): the unit of batching and of the learned probe."""
    return f"{entry[0]}/{entry[1].modality}"


def _form_batches(pool: Sequence[tuple[str, Item]], collate: Any, batch_size: int, samples: int,
                  rng: random.Random, learned: set[str] | None = None,
                  rehearsal: float = 1.0) -> tuple[list[str], Any, int]:
    """Batches of one form x modality group each. The training loop only counts the steps; each
    batch's group is drawn in the pool's proportions, a group in ``learned`` (filled by the learned
    probe as the stage goes) at ``rehearsal`` times its share; then ``batch_size`` of its entries."""
    by_group: dict[str, list[tuple[str, Item]]] = {}
    for entry in pool:
        by_group.setdefault(group_of(entry), []).append(entry)
    groups = sorted(by_group)
    learned = learned if learned is not None else set()

    def form_collate(_: list[str]) -> dict:
        weights = [len(by_group[g]) * (rehearsal if g in learned else 1.0) for g in groups]
        entries = by_group[rng.choices(groups, weights=weights)[0]]
        return collate(rng.sample(entries, min(batch_size, len(entries))))

    return [group_of(entry) for entry in pool], form_collate, max(1, round(samples / batch_size))


def _learned_check(vlm: VLM, encoder: Encoder, pool: Sequence[tuple[str, Item]], render: Any, cfg: InjectionConfig,
                   rng: random.Random, show: bool = False,
                   learned_groups: set[str] | None = None) -> tuple[Any, list[tuple[int, dict[str, float]]]]:
    """A ``stop_check`` for ``train``: True once every form's probe is answered exactly (greedy,
    teacher-forced) in at least ``learned_target`` of its entries; the scores go to the list, the
    groups at target (as of the last check) to ``learned_groups``."""
    import torch

    from ..training.losses import model_inputs

    groups: dict[str, list[tuple[str, Item]]] = {}
    for entry in pool:  # per form and modality: image questions are learned more slowly
        groups.setdefault(group_of(entry), []).append(entry)
    # Plain renderings (no question noise, no answer lead): what the evaluation asks.
    probes = {group: [render(f, i, vary=False) for f, i in rng.sample(entries, min(cfg.learned_probe, len(entries)))]
              for group, entries in sorted(groups.items())}
    scores: list[tuple[int, dict[str, float]]] = []

    def exact(items: list[Item]) -> int:
        return sum(shard_and_gather(items, exact_flags))

    def exact_flags(items: list[Item]) -> list[bool]:
        """Per item: answered exactly (several processes score a share each)."""
        flags: list[bool] = []
        for start in range(0, len(items), 32):
            chunk = items[start:start + 32]
            examples = [encoder.training_example(i, p) for i, p in zip(chunk, encoder.prompts(chunk))]
            batch = {k: v.to(vlm.device) for k, v in collate_examples(examples, encoder.pad_id).items()}
            with torch.no_grad():
                logits = vlm.model(**model_inputs(batch)).logits
            labels = batch["labels"][:, 1:]
            hits = (logits[:, :-1].argmax(-1) == labels) | (labels == -100)
            flags += hits.all(dim=1).tolist()
        return flags

    def check(step: int) -> bool:
        figures = {group: exact(items) / len(items) for group, items in probes.items()}
        scores.append((step, figures))
        if learned_groups is not None:
            learned_groups.clear()
            learned_groups.update(group for group, value in figures.items() if value >= cfg.learned_target)
        if show:
            from tqdm.auto import tqdm

            tqdm.write(f"inject: step {step}, share answered exactly: "
                       + ", ".join(f"{group} {value:.2f}" for group, value in figures.items()))
        return all(value >= cfg.learned_target for value in figures.values())

    return check, scores


def _skill_stage(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig, renderer: McqRenderer, collate: Any,
                 pool_of: Any, loss: Any, progress: bool, extra: Sequence[Item] = ()) -> dict[str, Any]:
    import torch

    from ..eval.evaluator import EvalConfig, Evaluator

    source = list(benchmark.pretrain_train) or list(benchmark.finetune_train)
    if extra and not any(renderer.renderable(i) for i in source):  # the benchmark's own multiple-choice questions
        source = list(extra)
    people = sorted({i.person_id for i in source})[: cfg.skill_people]
    items = [i for i in source if i.person_id in set(people) and renderer.renderable(i)]
    if not items:
        return {"steps": 0, "skipped": "no item can be asked as multiple choice (no attribute metadata, no "
                                       "classification questions)", "losses": []}
    pool = pool_of(items, SKILL_FORMS)
    probe_rng = random.Random(cfg.seed + 7)
    probe = [renderer(i, vary=False) for i in probe_rng.sample(items, min(len(items), 160))]
    evaluator = Evaluator(vlm, EvalConfig(progress=False))
    accuracies: list[tuple[int, float]] = []

    def reached(step: int) -> bool:
        with torch.no_grad():
            records = evaluator.score_group(probe, "mcq")
        accuracies.append((step, sum(r["correct"] for r in records) / len(records)))
        return accuracies[-1][1] >= cfg.skill_target

    train_cfg = TrainConfig(lr=cfg.lr, max_steps=cfg.skill_max_steps, batch_size=cfg.batch_size, schedule="constant",
                            warmup_ratio=cfg.warmup_ratio, seed=cfg.seed + 100, lora=cfg.lora, progress=progress,
                            fused_optimizer=cfg.fused_optimizer, shared_batches=True)
    result = train(vlm.model, pool, collate, loss, train_cfg, description="inject: multiple-choice skill",
                   stop_check=reached, check_every=cfg.skill_check_every)
    return {"steps": result.steps, "people": len(people), "first_loss": result.losses[0],
            "last_loss": result.losses[-1], "mcq_accuracy": accuracies, "losses": result.losses}


def injection_cache_key(family: str, size: dict[str, Any], benchmark_key: str, cfg: InjectionConfig) -> str:
    from ..utils import stable_hash

    settings = cfg.to_dict()
    # Options added later are left out of the key while off, so models trained before they
    # existed (identically) stay valid cache entries.
    for option in ("identity_copies", "image_augment", "qa_task_forms", "mcq_question_noise", "answer_lead_share",
                   "fused_optimizer"):
        if not settings[option]:
            del settings[option]
    if not cfg.answer_lead_share:
        del settings["answer_leads"]
    key = {"family": family, "size": size, "benchmark": benchmark_key, "injection": settings, "format": 1}
    # Several processes train the same batches, but their gradient sums round differently (as a
    # second thread's would): over 13k steps another model, cached apart from one process's.
    processes = process_rank_and_count()[1]
    if processes > 1:
        key["processes"] = processes
    return stable_hash(key)


INJECTION_META = "injection.json"  # beside a vanilla model's weights: how it was trained, and on what


def injection_meta_text(meta: dict[str, Any]) -> str:
    return json.dumps(meta, indent=2, default=str)
