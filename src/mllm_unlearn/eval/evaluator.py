"""MLLMU-Bench's protocol: per split x modality, classification (two scorers), cloze and generation.

Two settings (``EvalConfig.protocol``): ``"mllmu"`` is MLLMU-Bench's eval.py exactly (its
per-task few-shot from ``Full_Set``, its LLaVA prompt text, generation scorer; see
data/mllmu_protocol.py); ``"ours"`` (the default) scores zero-shot through each family's chat
template, with the likelihood scorer and optional ``few_shot`` people of the split.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Collection, Iterable, Sequence, Union

import torch

from ..data import mllmu_protocol
from ..data.collate import Encoder, image_fingerprint
from ..data.items import OPTION_KEYS, Benchmark, Item
from ..data.layouts import FULL_SET
from ..models.base import VLM
from .metrics import bleu, cloze_correct, parse_letter, rouge_l_f
from .prefix import generate_after_prefix, has_forward_hooks, last_token_logprobs, same_images, shared_prefix_length

TASKS = ("mcq", "cloze", "generation")
PROTOCOLS = ("ours", mllmu_protocol.PROTOCOL)
# Demonstrations shown before every question, or a function giving each item its own (the
# attack battery's in-context attack: the same person's other facts).
Demos = Union[Sequence[Item], Callable[[Item], Sequence[Item]]]
Group = tuple[str, str, str]  # (split, modality, task): one figure's items


@dataclass
class EvalConfig:
    protocol: str = "ours"  # ours | mllmu (MLLMU-Bench's eval.py settings exactly; see the module docstring)
    scorer: str | None = None  # likelihood | generate (MLLMU-Bench's); None: generate under protocol mllmu, else likelihood
    tasks: tuple[str, ...] = TASKS
    splits: tuple[str, ...] = ("forget", "test", "retain", "real_world")
    few_shot: int = 0  # protocol "ours": demonstration people per split (excluded from scoring)
    batch_size: int = 32
    max_new_tokens: int | None = None  # None: the benchmark's own (MLLMU-Bench 50; CLEAR 300, eval/clear.py)
    max_items_per_group: int | None = None  # subsample each split x modality x task (seeded)
    image_swap_check: bool = False  # also score VQA MCQs with each portrait swapped for another person's
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"EvalConfig.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.scorer is None:
            self.scorer = "generate" if self.protocol == mllmu_protocol.PROTOCOL else "likelihood"
        if self.scorer not in ("likelihood", "generate"):
            raise ValueError(f"EvalConfig.scorer must be 'likelihood' or 'generate', got {self.scorer!r}")
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"EvalConfig.tasks has unknown task(s) {sorted(unknown)}; tasks are {TASKS}")
        if self.few_shot < 0:
            raise ValueError(f"EvalConfig.few_shot must be >= 0, got {self.few_shot}")
        if self.few_shot and self.protocol == mllmu_protocol.PROTOCOL:
            raise ValueError(f"few_shot ({self.few_shot}) is an option of protocol 'ours'; protocol 'mllmu' shows "
                             f"MLLMU-Bench's own demonstrations, per task {mllmu_protocol.FEW_SHOT_PROFILES}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")


def option_letter_ids(encoder: Encoder) -> dict[str, int]:
    """Each option letter's token: the first token of that letter as an answer, i.e. what the model
    emits right after the generation prompt when it answers with the letter. Four distinct tokens,
    or a ValueError (with SentencePiece, a letter encoded alone can start with a "▁" that all
    letters share, and every letter would score the same)."""
    ids = {letter: encoder.first_answer_token(letter) for letter in OPTION_KEYS}
    if len(set(ids.values())) < len(ids):
        tokenizer = encoder.tokenizer
        spelled = {letter: tokenizer.convert_ids_to_tokens(encoder.answer_ids(letter)) for letter in OPTION_KEYS}
        raise ValueError(f"the option letters do not start with distinct tokens under this tokenizer ({spelled}): "
                         "the likelihood scorer could not tell them apart")
    return ids


def batches(items: Sequence[Item], size: int) -> Iterable[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Evaluator:
    def __init__(self, vlm: VLM, cfg: EvalConfig | None = None, encoder: Encoder | None = None):
        """``encoder``: prompts from this encoder (e.g. the prompt attack's, which pre-fills the
        answer); default the model's chat template under ``cfg.protocol``."""
        self.vlm = vlm
        self.encoder = encoder or Encoder(vlm, protocol=(cfg or EvalConfig()).protocol)
        self.letter_ids = option_letter_ids(self.encoder)
        self.cfg = cfg or EvalConfig()
        # Questions about one portrait share its prefix pass (eval/prefix.py); False scores each whole.
        self.share_prefixes = True
        self._demonstrations: dict[tuple[str, ...], tuple[Any, list[Item]]] = {}

    @property
    def cfg(self) -> EvalConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: EvalConfig) -> None:
        # The prompts follow the protocol: a new protocol needs an encoder (and prompt cache) of its own.
        self._cfg = cfg
        if self.encoder.protocol != cfg.protocol:
            self.encoder = Encoder(self.vlm, protocol=cfg.protocol)
            self.letter_ids = option_letter_ids(self.encoder)

    def _inputs(self, items: Sequence[Item], demos: Demos) -> dict[str, torch.Tensor]:
        if callable(demos):  # each item with demonstrations of its own
            from ..data.collate import collate

            batch = collate(self._prompts(items, demos), self.encoder.pad_id)
        else:
            batch = self.encoder.batch(items, train=False, demos=demos)
        return {k: v.to(self.vlm.device) for k, v in batch.items()}

    def model_inputs(self, items: Sequence[Item], demos: Demos = ()) -> dict[str, torch.Tensor]:
        """The batch the scorers feed the model for ``items`` (left-padded, on the model's device)."""
        return self._inputs(items, demos)

    def length_order(self, items: Sequence[Item], demos: Demos = ()) -> list[int]:
        """Item indices by prompt length (the batching order of ``score_group``)."""
        return self._by_length(items, demos)

    def _prompts(self, items: Sequence[Item], demos: Demos) -> list[dict[str, torch.Tensor]]:
        if callable(demos):
            return [self.encoder.prompts([item], demos(item))[0] for item in items]
        return self.encoder.prompts(items, demos)

    @torch.no_grad()
    def letter_scores(self, items: Sequence[Item], demos: Demos = ()) -> list[dict[str, float]]:
        """Log-probability of each option letter as the answer's first token: one forward pass per batch."""
        logits = self.vlm.model(**self._inputs(items, demos), logits_to_keep=1).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        return [{k: float(row[i]) for k, i in self.letter_ids.items()} for row in logprobs]

    @torch.no_grad()
    def generate(self, items: Sequence[Item], demos: Demos = (), max_new_tokens: int | None = None) -> list[str]:
        inputs = self._inputs(items, demos)
        tokenizer = self.vlm.tokenizer
        length = self._generation_length(max_new_tokens)
        output = self.vlm.model.generate(**inputs, do_sample=False, max_new_tokens=length,
                                         pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.vlm.decode(new_tokens)

    def score_group(self, items: Sequence[Item], task: str, demos: Demos = ()) -> list[dict[str, Any]]:
        """One record per item; under ``accelerate launch`` the items are shared out over the processes."""
        from ..utils import shard_and_gather

        return shard_and_gather(list(items), lambda mine: self._score_items(mine, task, demos))

    def _by_length(self, items: Sequence[Item], demos: Demos) -> list[int]:
        """Item indices ordered by prompt length, so a batch holds prompts of (nearly) one length
        and less padding is computed."""
        lengths = []
        for start in range(0, len(items), 256):  # encodes (and caches) the prompts in big processor calls
            lengths += [p["input_ids"].shape[1] for p in self._prompts(items[start:start + 256], demos)]
        return sorted(range(len(items)), key=lambda k: lengths[k])

    def _score_items(self, items: Sequence[Item], task: str, demos: Demos) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [{}] * len(items)
        for members, prompts, length in self._portrait_groups(items, demos):
            if task == "mcq" and self.cfg.scorer == "likelihood":
                rows = last_token_logprobs(self.vlm, prompts, length, self.cfg.batch_size, list(self.letter_ids.values()))
                predictions = [max(zip(self.letter_ids, row.tolist()), key=lambda pair: pair[1])[0] for row in rows]
            else:
                predictions = generate_after_prefix(self.vlm, prompts, length, self.cfg.batch_size,
                                                    self._generation_length(), self.encoder.pad_id)
            for k, prediction in zip(members, predictions):
                records[k] = self._record(items[k], task, prediction)
        rest = [k for k in range(len(items)) if not records[k]]
        if self.cfg.batch_size > 1 and len(rest) > 1:
            order = self._by_length([items[k] for k in rest], demos)
            rest = [rest[k] for k in order]
        for k, record in zip(rest, self._score_in_order([items[k] for k in rest], task, demos)):
            records[k] = record
        return records

    def _portrait_groups(self, items: Sequence[Item], demos: Demos) -> list[tuple[list[int], list[dict[str, Any]], int]]:
        """(item indices, their prompts, shared prefix length) for each portrait asked about more than
        once, whose prompts share a prefix holding its image tokens (eval/prefix.py); nothing when
        ``share_prefixes`` is off, demonstrations differ per item, or a hook is on the model."""
        if not self.share_prefixes or callable(demos) or has_forward_hooks(self.vlm.model):
            return []
        by_images: dict[tuple, list[int]] = {}
        for k, item in enumerate(items):
            if item.image is not None:
                by_images.setdefault(tuple(image_fingerprint(i.image) for i in [*demos, item] if i.image is not None),
                                     []).append(k)
        image_tokens = self.vlm.adapter.visual_token_ids(self.vlm.model)
        groups = []
        for members in by_images.values():
            if len(members) < 2:
                continue
            prompts = self._prompts([items[k] for k in members], demos)
            order = sorted(range(len(members)), key=lambda j: prompts[j]["input_ids"].shape[1])  # less padding
            members, prompts = [members[j] for j in order], [prompts[j] for j in order]
            length = shared_prefix_length(prompts, image_tokens)
            sequence_keys = {n for n, v in prompts[0].items() if v.dim() == 2 and v.shape == prompts[0]["input_ids"].shape}
            if length and same_images(prompts, sequence_keys):
                groups.append((members, prompts, length))
        return groups

    def _shared_prefix_scores(self, items: Sequence[Item], demos: Demos) -> dict[int, dict[str, float]]:
        """Letter scores of the items scored through their portrait's prefix pass."""
        out: dict[int, dict[str, float]] = {}
        for members, prompts, length in self._portrait_groups(items, demos):
            rows = last_token_logprobs(self.vlm, prompts, length, self.cfg.batch_size, list(self.letter_ids.values()))
            for k, row in zip(members, rows):
                out[k] = {letter: float(row[j]) for j, letter in enumerate(self.letter_ids)}
        return out

    def _generation_length(self, max_new_tokens: int | None = None) -> int:
        return max_new_tokens or self.cfg.max_new_tokens or mllmu_protocol.MAX_NEW_TOKENS

    def _score_in_order(self, items: Sequence[Item], task: str, demos: Demos) -> list[dict[str, Any]]:
        records = []
        for batch in batches(items, self.cfg.batch_size):
            if task == "mcq" and self.cfg.scorer == "likelihood":
                scores = self.letter_scores(batch, demos)
                predictions = [max(s, key=s.get) for s in scores]
            else:
                predictions = self.generate(batch, demos)
            records += [self._record(item, task, prediction) for item, prediction in zip(batch, predictions)]
        return records

    def _record(self, item: Item, task: str, prediction: str) -> dict[str, Any]:
        record = {"person_id": item.person_id, "question": item.question, "answer": item.answer,
                  "image": item.image_key, "prediction": prediction}
        if task == "mcq":
            letter = prediction if self.cfg.scorer == "likelihood" else parse_letter(prediction)
            record["correct"] = letter == item.answer
        elif task == "cloze":
            record["correct"] = cloze_correct(prediction, item.answer)
        else:
            record["rougeL_f"] = rouge_l_f(prediction, item.answer)
            record["bleu"] = bleu(prediction, item.answer)
        return record

    def evaluate(self, benchmark: Benchmark, edit: Any = None, only: Collection[Group] | None = None,
                 known: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Every figure and every item's prediction; with ``edit`` applied for the duration.

        ``only``: score just these (split, modality, task) groups (the few-shot plan is still the
        whole evaluation's, so their records are the ones a whole evaluation gives). ``known``:
        predictions an earlier evaluation of the same model and settings made (e.g. the knowledge
        check's forget classification), taken for each group they cover item for item instead of
        scoring it again."""
        if edit is not None:
            with edit.applied(self.vlm):
                return self._evaluate(benchmark, edit, only, known)
        return self._evaluate(benchmark, None, only, known)

    def items_read(self, benchmark: Benchmark) -> list[Item]:
        """Every item an evaluation under ``cfg`` reads: its splits' and the demonstrations shown
        (MLLMU-Bench's ``Full_Set`` ones under protocol mllmu). What a cached figure is keyed by."""
        items = [i for split in self.cfg.splits for i in benchmark.eval_splits.get(split, [])]
        return items + [i for _, shown in self.few_shot_plan(benchmark).values() for i in shown]

    def _evaluate(self, benchmark: Benchmark, edit: Any = None, only: Collection[Group] | None = None,
                  known: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        earlier: dict[Group, list[dict[str, Any]]] = {}
        for record in known:
            earlier.setdefault((record["split"], record["modality"], record["task"]), []).append(
                {k: v for k, v in record.items() if k not in ("split", "modality", "task")})
        figures: dict[str, dict[str, dict[str, float]]] = {}
        predictions: list[dict[str, Any]] = []
        groups = []
        for split in cfg.splits:
            if split not in benchmark.eval_splits:
                raise ValueError(f"benchmark {benchmark.name} has no split {split!r}; it has {sorted(benchmark.eval_splits)}")
        few_shot = self.few_shot_plan(benchmark)
        for split in cfg.splits:
            items = benchmark.eval_splits[split]
            for modality in ("vqa", "qa"):
                for task in cfg.tasks:
                    group = [i for i in items if i.modality == modality and i.task == task]
                    skipped, shown = few_shot.get((split, task), (set(), []))
                    demos = [i for i in shown if i.modality == modality]
                    scored = [i for i in group if i.person_id not in skipped]
                    if cfg.max_items_per_group and len(scored) > cfg.max_items_per_group:
                        scored = random.Random(f"{cfg.seed}:{split}:{modality}:{task}").sample(scored, cfg.max_items_per_group)
                    if scored and (only is None or (split, modality, task) in only):
                        groups.append((split, modality, task, scored, demos))
        bar = tqdm(total=sum(len(g[3]) for g in groups), desc="evaluate", disable=not cfg.progress, unit="item")
        for split, modality, task, scored, demos in groups:
            records = earlier.get((split, modality, task), [])
            if [(r["person_id"], r["question"], r["image"]) for r in records] != \
                    [(i.person_id, i.question, i.image_key) for i in scored]:  # not this group's items: scored here
                with edit.for_task(task) if edit is not None else nullcontext():
                    records = self.score_group(scored, task, demos)
            bar.update(len(scored))
            cell = figures.setdefault(split, {}).setdefault(modality, {})
            if task in ("mcq", "cloze"):
                cell[f"{task}_accuracy"] = 100.0 * sum(r["correct"] for r in records) / len(records)
            else:
                cell["rougeL_f"] = sum(r["rougeL_f"] for r in records) / len(records)
                cell["bleu"] = sum(r["bleu"] for r in records) / len(records)
            cell[f"{task}_count"] = len(records)
            for record in records:
                predictions.append({"split": split, "modality": modality, "task": task, **record})
        bar.close()
        config = {**asdict(cfg), "max_new_tokens": cfg.max_new_tokens or mllmu_protocol.MAX_NEW_TOKENS}
        demonstrations: dict[str, dict[str, list[str]]] = {}
        for (split, task), (skipped, _) in few_shot.items():
            if skipped:
                demonstrations.setdefault(split, {})[task] = sorted(skipped)
        results: dict[str, Any] = {"config": config, "figures": figures, "predictions": predictions,
                                   "demonstration_people": demonstrations}
        if cfg.image_swap_check and only is None:  # a diagnostic of the whole evaluation
            results["diagnostics"] = {"image_swap": self.image_swap_accuracy(benchmark)}
        return results

    def few_shot_plan(self, benchmark: Benchmark) -> dict[tuple[str, str], tuple[set[str], list[Item]]]:
        """(split, task) -> (people not scored, demonstration items of both modalities), seeded.

        Protocol "ours": ``few_shot`` people of the split, the same for every task, shown with
        their own items of that task. Protocol "mllmu": MLLMU-Bench's per-task draw with
        demonstrations from ``Full_Set`` (data/mllmu_protocol.py)."""
        cfg = self.cfg
        plan: dict[tuple[str, str], tuple[set[str], list[Item]]] = {}
        if cfg.protocol != mllmu_protocol.PROTOCOL:
            if not cfg.few_shot:
                return plan
            for split in cfg.splits:
                items = benchmark.eval_splits[split]
                people = sorted({i.person_id for i in items})
                chosen = set(random.Random(f"{cfg.seed}:{split}").sample(people, min(cfg.few_shot, max(0, len(people) - 1))))
                for task in cfg.tasks:
                    plan[(split, task)] = (chosen, [i for i in items if i.task == task and i.person_id in chosen])
            return plan
        drawn: dict[tuple[str, str], list[str]] = {}
        for split in cfg.splits:
            people = sorted({i.person_id for i in benchmark.eval_splits[split]})
            for task in cfg.tasks:
                # At least one person stays scored (eval.py would fail to draw, or score nobody).
                count = min(mllmu_protocol.FEW_SHOT_PROFILES[task], max(0, len(people) - 1))
                if count:
                    drawn[(split, task)] = random.Random(f"{cfg.seed}:{split}:{task}").sample(people, count)
        if not drawn:
            return plan
        if benchmark.demonstrations is None:
            raise ValueError(f"protocol mllmu reads its few-shot demonstrations from MLLMU-Bench's "
                             f"{FULL_SET} config, which {benchmark.name} lacks (download that config "
                             f"next to the others, or use protocol 'ours')")
        wanted = tuple(sorted({p for people in drawn.values() for p in people}))
        cached = self._demonstrations.get(wanted)
        if cached is None or cached[0] is not benchmark.demonstrations:
            # Read once: the same Item objects every evaluation keep the prompt cache warm.
            cached = self._demonstrations[wanted] = (benchmark.demonstrations, benchmark.demonstrations(wanted))
        source = cached[1]
        in_full_set = {i.person_id for i in source}
        for (split, task), people in drawn.items():
            # eval.py finds each drawn ID in Full_Set: one it lacks is neither shown nor skipped.
            found = set(people) & in_full_set
            shown = split in mllmu_protocol.DEMONSTRATION_SPLITS[task]
            plan[(split, task)] = (found, [i for i in source if i.person_id in found and i.task == task] if shown else [])
        return plan

    def image_swap_accuracy(self, benchmark: Benchmark) -> dict[str, float]:
        """VQA classification accuracy when each portrait is replaced by another person's.

        If the image carries the identity, accuracy should fall to about chance."""
        out = {}
        for split in ("forget", "retain"):
            items = [i for i in benchmark.eval_splits.get(split, []) if i.modality == "vqa" and i.task == "mcq"]
            people = sorted({i.person_id for i in items})
            if len(people) < 2:
                continue
            images = {i.person_id: i.image for i in items}
            shifted = {p: images[people[(k + 1) % len(people)]] for k, p in enumerate(people)}  # a derangement
            swapped = [Item(i.person_id, i.split, "vqa", "mcq", i.question, i.answer, shifted[i.person_id], i.options)
                       for i in items]
            records = self.score_group(swapped, "mcq")
            out[f"{split}_vqa_mcq_accuracy"] = 100.0 * sum(r["correct"] for r in records) / len(records)
        return out


def evaluate(vlm: VLM, benchmark: Benchmark, edit: Any = None, cfg: EvalConfig | None = None) -> dict[str, Any]:
    return Evaluator(vlm, cfg).evaluate(benchmark, edit)
