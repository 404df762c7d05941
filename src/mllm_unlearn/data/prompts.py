"""Prompts built from items: MLLMU-Bench's multiple-choice prompt, evaluation-format versions of
open QA pairs, and the multiple-choice renderings knowledge injection, the relearning attacks and
MLLMEraser train or probe on."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from .items import OPTION_KEYS, Item
from .layouts import CLOZE_INSTRUCTION, GENERATION_INSTRUCTION, MCQ_INSTRUCTION
from .synthetic import subject_forms


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    """MLLMU-Bench's classification prompt: the question, its lettered options, its instruction."""
    lines = [question] + [f"{key}: {options[key]}" for key in OPTION_KEYS if key in options] + [MCQ_INSTRUCTION]
    return "\n".join(lines)


IDENTITY_QUESTION = "Who is the person in this image?"


def bare_word(word: str) -> str:
    """A question word without its possessive and trailing punctuation ("person's" -> "person")."""
    return word.split("'")[0].rstrip("?.,")


class McqRenderer:
    """Multiple-choice versions of QA items that carry ``Attribute``/``Value`` metadata.

    Options and their order are drawn afresh every time an item is rendered: a fixed
    rendering would be memorised (question + option order -> letter) instead of the fact.
    """

    def __init__(self, items: Sequence[Item], seed: int, question_noise: float = 0.0, lead_share: float = 0.0,
                 leads: Sequence[str] = (), names: dict[str, str] | None = None):
        self.rng = random.Random(seed)
        for option, value in (("mcq_question_noise", question_noise), ("answer_lead_share", lead_share)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"InjectionConfig.{option} must lie in [0, 1], got {value}")
        if lead_share and not leads:
            raise ValueError("InjectionConfig.answer_leads is empty while answer_lead_share > 0")
        self.question_noise, self.lead_share, self.leads = question_noise, lead_share, tuple(leads)
        self.names = names or {}
        # Their own streams: switching noise or leads on leaves the options' draws unchanged.
        self.noise_rng = random.Random(seed + 61)
        self.lead_rng = random.Random(seed + 67)
        # An image question's subject ("this person"), as the built-in world words it.
        self.subject_words = {bare_word(w) for form in subject_forms(None).values() for w in form.split()}
        # Replacement words: the training questions' words that name or point at nobody.
        name_words = {w for name in self.names.values() for w in name.split()}
        self.words = sorted({w for item in items for w in item.question.split()
                             if bare_word(w) not in name_words | self.subject_words})
        self.pools: dict[str, list[str]] = {}
        for item in items:
            if "Attribute" in item.meta:
                self.pools.setdefault(item.meta["Attribute"], set()).add(item.meta["Value"])  # type: ignore[arg-type]
        self.pools = {k: sorted(v) for k, v in self.pools.items()}

    def renderable(self, item: Item) -> bool:
        """An item with ``Attribute``/``Value`` metadata whose attribute has 4+ values, or a multiple-choice
        question of the benchmark's own (options A-D, its answer a letter)."""
        if item.task == "mcq":
            return sorted(item.options or {}) == list(OPTION_KEYS) and item.answer in OPTION_KEYS
        return len(self.pools.get(item.meta.get("Attribute", ""), ())) >= 4

    def __call__(self, item: Item, with_context: bool = False, vary: bool = True) -> Item:
        """One rendering; ``vary`` False: without question noise and answer leads (the learned probe's). A
        benchmark's own multiple-choice question keeps its options, their order drawn afresh."""
        if item.task == "mcq":
            value = (item.options or {})[item.answer]
            options = list((item.options or {}).values())
        else:
            value = item.meta["Value"]
            others = [v for v in self.pools[item.meta["Attribute"]] if v != value]
            options = [value] + self.rng.sample(others, 3)
        self.rng.shuffle(options)
        question = self.noisy(item) if vary else item.question
        context = value if item.task == "mcq" else item.answer  # the fact stated before the question
        question = f"{context} {question}" if with_context else question
        answer = OPTION_KEYS[options.index(value)]
        if vary and self.lead_share and self.lead_rng.random() < self.lead_share:
            answer = f"{self.lead_rng.choice(self.leads)} {answer}"
        return Item(item.person_id, item.split, item.modality, "mcq", question, answer,
                    item.image, dict(zip(OPTION_KEYS, options)), item.image_key, dict(item.meta))

    def noisy(self, item: Item) -> str:
        """``item``'s question, in ``question_noise`` of the calls with each non-subject word replaced
        by a random training word with probability one half."""
        if not self.question_noise or self.noise_rng.random() >= self.question_noise:
            return item.question
        kept = self.subject_words | set(self.names.get(item.person_id, "").split())
        return " ".join(word if bare_word(word) in kept or self.noise_rng.random() >= 0.5 else self.noise_rng.choice(self.words)
                        for word in item.question.split())


QA_TASK_FORMS = ("generation", "cloze")


def as_task_prompt(item: Item, task: str) -> Item | None:
    """``item`` (an open QA pair) asked in evaluation format ``task``; None if it cannot be
    (cloze needs the fact's ``Value`` inside the answer sentence)."""
    if task == "generation":
        return replace(item, question=f"{item.question}\n{GENERATION_INSTRUCTION}")
    value = str(item.meta.get("Value", ""))
    if not value or value not in item.answer:
        return None
    statement = item.answer.replace(value, "[Blank]", 1)
    return replace(item, question=f"{statement}\n{CLOZE_INSTRUCTION}", answer=value)
