"""Prompt attacks: the same classification questions asked so that hidden knowledge is coaxed out.

- ``in_context``: before each question, the same person's other classification questions of the
  same modality, each answered with its correct letter (as few-shot turns of the chat): the
  attacker reminds the model of who the person is (Lynch et al. 2024; in-context relearning).
  The question itself is never among its demonstrations.
- ``prefix``: the assistant's answer is pre-filled with ``prefix`` (default "Sure, the answer
  is"), pre-committing the model to answer; the option letter is read right after it. The
  letters' tokens are taken in that context (a BPE tokenizer spells " A" after a word otherwise
  than "A" after the chat template's generation prompt). An empty prefix is the plain evaluation
  exactly. A tokenizer that does not know a prefix word (the tiny models' word-level one knows
  only the benchmark's words) reads it as unknown: the figures list such words.
- ``other_photo`` (VQA): the forget people's questions with the test split's transformed portrait
  of the same person instead of the original one. The test split holds forget people only, so
  this variant has no retain control.

Chance is 25% for each. The attack's figure is the highest forget accuracy over the variants.
"""
from __future__ import annotations

from typing import Any, Sequence

from ...data.collate import Encoder
from ...data.items import Benchmark, Item
from ...models.base import VLM
from .base import (
    MCQ_CHANCE,
    Attack,
    AttackConfig,
    AttackResult,
    ProbeSets,
    accuracy_table,
    attack_evaluator,
    edited,
    mcq_records,
    probe_sets,
    progress_bar,
    register_attack,
    score_mcq,
    stages,
)

VARIANTS = ("in_context", "prefix", "other_photo")


class PrefilledEncoder(Encoder):
    """An Encoder whose prompts end with the assistant's answer begun with ``prefix`` ("" = the
    plain Encoder's prompts exactly)."""

    def __init__(self, vlm: Any, prefix: str, **kwargs: Any):
        super().__init__(vlm, **kwargs)
        self.prefix = prefix

    def _key(self, item: Item, demos: Sequence[Item]) -> tuple:
        return super()._key(item, demos) + (("prefix", self.prefix),)

    def prompt_text(self, item: Item, demos: Sequence[Item] = ()) -> str:
        text = super().prompt_text(item, demos)
        if not self.prefix:
            return text
        _, lead = self._generation_prompt_and_answer_lead()
        return text + lead + self.prefix

    def first_answer_token(self, answer: str) -> int:
        """The token the model emits first when it continues the prefix with " ``answer``"."""
        if not self.prefix:
            return super().first_answer_token(answer)
        prompt, lead = self._generation_prompt_and_answer_lead()
        before = prompt + lead + self.prefix
        base = self.tokenizer(before, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(f"{before} {answer}", add_special_tokens=False)["input_ids"]
        if full[:len(base)] == base and len(full) > len(base):
            return full[len(base)]
        return self.tokenizer(f" {answer}", add_special_tokens=False)["input_ids"][0]

    def unknown_prefix_words(self) -> list[str]:
        """The prefix's words the tokenizer reads as unknown."""
        unk = self.tokenizer.unk_token_id
        if unk is None or not self.prefix:
            return []
        try:
            encoded = self.tokenizer(self.prefix, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer: no offsets
            encoded = None
        if encoded is None or "offset_mapping" not in encoded:
            ids = self.tokenizer(self.prefix, add_special_tokens=False)["input_ids"]
            return ["<unk>"] * ids.count(unk)
        return [self.prefix[a:b] for i, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"]) if i == unk]


def same_person_demos(items: Sequence[Item]) -> Any:
    """Item -> the other items of its person and modality among ``items``, in their order."""
    by_person: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        by_person.setdefault((item.person_id, item.modality), []).append(item)
    return lambda item: [other for other in by_person[(item.person_id, item.modality)] if other is not item]


def other_photo(benchmark: Benchmark) -> Any:
    """Item -> the same VQA question with the test split's portrait of its person (None when the
    item is not VQA or its person has no test portrait)."""
    portraits = {i.person_id: (i.image, i.image_key) for i in benchmark.eval_splits.get("test", []) if i.modality == "vqa"}

    def swap(item: Item) -> Item | None:
        if item.modality != "vqa" or item.person_id not in portraits:
            return None
        image, key = portraits[item.person_id]
        return Item(item.person_id, item.split, item.modality, item.task, item.question, item.answer, image,
                    item.options, key, dict(item.meta))

    return swap


@register_attack
class PromptAttack(Attack):
    name = "prompt"
    description = "in-context facts of the person, a pre-committing answer prefix, another photo of the person"

    def run(self, vlm: VLM, benchmark: Benchmark, edit: Any, cfg: AttackConfig) -> AttackResult:
        sets = probe_sets(benchmark, cfg)
        plain = attack_evaluator(vlm, cfg)
        encoder = PrefilledEncoder(vlm, cfg.prefix)
        prefixed = attack_evaluator(vlm, cfg, encoder=encoder)
        swap = other_photo(benchmark)
        plan = stages(edit)
        bar = progress_bar(len(plan) * len(VARIANTS), self.name, cfg)
        records = []
        for stage, stage_edit in plan:
            with edited(vlm, stage_edit):
                for group, items in sets.groups():
                    if items:
                        demos = same_person_demos(items)
                        records += mcq_records(plain.score_group(items, "mcq", demos), items, "prompt_in_context",
                                               stage, group)
                bar.update(1)
                records += score_mcq(prefixed, sets, "prompt_prefix", stage)
                bar.update(1)
                records += score_mcq(plain, ProbeSets(sets.forget, []), "prompt_other_photo", stage, transform=swap)
                bar.update(1)
        bar.close()
        table = accuracy_table(records)
        per_variant = {v: table.get(f"prompt_{v}", {}) for v in VARIANTS}
        best: dict[str, float | None] = {}
        for modality in ("vqa", "qa", "all"):
            values = [cell.get("unlearned", {}).get("forget", {}).get(modality) for cell in per_variant.values()]
            values = [v for v in values if v is not None]
            best[modality] = max(values) if values else None
        figures = {"chance": MCQ_CHANCE, "prefix": cfg.prefix, "unknown_prefix_words": encoder.unknown_prefix_words(),
                   "variants": per_variant, "max_forget_unlearned": best}
        return AttackResult(records, figures)

