"""Text-only forms of image + question training pairs: the person named in place of the image.

MLLMU-Bench's published ``ft_Data`` has no ``Type``: every pair is asked about the image ("What
is this person's occupation?"). Methods that compare or preserve the text-only modality (MANU,
MMUnlearner's language mask, MIP-Editor's text paths) need the same facts asked without the
image, as the papers' code builds them (MANU's ``LLAVA_unimodal_Dataset``): the placeholder
phrases "this person", "the person", "this individual", "the individual" and "this profile"
become the person's name (any case; "this person's" becomes "<name>'s"). Only training pairs are
rewritten, never evaluation questions. A pair gets no text form when its question holds no
placeholder (it would not say whom it asks about) or when it asks for the name itself (a name
question, or an answer that is just the name). Where the data already has text-only (``qa``)
pairs for a person (``Type: Pure_Text``, the built-in world), those are used as they are.

Loaders that know names put them in each training item's ``meta[PERSON_NAME]`` (``None`` when no
name was found, which makes a method that needs text forms fail with a clear error). Items
without that key (CLEAR's loader, hand-built items) contribute only their own ``qa`` items.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from .items import Benchmark, Item

PERSON_NAME = "person_name"  # Item.meta key: the person's name (None: not found)
PLACEHOLDER = re.compile(r"\b(?:(?:this|the)\s+(?:person|individual)|this\s+profile)\b", re.IGNORECASE)
# The questions MANU's released code recognises as asking for the person's name.
NAME_QUESTIONS = frozenset(q.lower() for q in (
    "What is the name of the person in this profile?",
    "What is this person's name as stated in the biography?",
    "What is the person's name?",
    "What is the name of the person in the image?",
    "What is this person's name?",
    "What is the full name of this person?",
    "What is the full name of the person in the image?",
    "What is the name of the person in this biography?",
    "What is the name of the person in the profile?",
    "What is the name of the person in the biography?",
    "What is the person's name as stated in the profile?",
    "What is this person's full name?",
    "What is the name of this individual?",
    "What is the name of the individual in the profile?",
    "What is the name of this person?",
    "What is the name associated with this profile?",
    "What is the name of the individual in the image?",
))
NO_NAME_HELP = "no `name` column, biography name or name question"


class TextFormError(ValueError):
    """A method needs text-only forms of training items that cannot be built."""


def is_name_question(question: str) -> bool:
    return question.strip().lower() in NAME_QUESTIONS


def name_from_answer(answer: str) -> str:
    """The name in an answer to a name question, as MANU's code reads it: the text after
    "named", else after the word "is", else the whole answer (trailing period dropped)."""
    text = answer.strip().rstrip(".").strip()
    if "named" in text:
        return text[text.index("named") + len("named"):].strip()
    match = re.search(r"\bis\b (.+)", text)
    return match.group(1).strip() if match else text


def text_only_form(item: Item, name: str) -> Item | None:
    """The text-only form of an image + question training item, or None when it has none."""
    if item.modality != "vqa":
        raise ValueError(f"text_only_form rewrites image + question items; this one is {item.modality!r}")
    if not name:
        raise ValueError(f"text_only_form needs the name of person {item.person_id}")
    answer_is_name = name_from_answer(item.answer).lower() == name.lower() or item.answer.strip().lower() == name.lower()
    if is_name_question(item.question) or answer_is_name or not PLACEHOLDER.search(item.question):
        return None
    return replace(item, modality="qa", question=PLACEHOLDER.sub(name, item.question),
                   answer=PLACEHOLDER.sub(name, item.answer), image=None, image_key=None,
                   meta={**item.meta, "text_form_of": "image+question"})


@dataclass
class TextForms:
    """The text-only training items of a set, and what could not be rewritten."""

    items: list[Item] = field(default_factory=list)
    given: int = 0  # qa items in the data (Pure_Text pairs)
    built: int = 0  # text forms built from image + question pairs
    without_form: int = 0  # image pairs with no placeholder, or asking for the name
    people_without_name: list[str] = field(default_factory=list)  # needed a form, no name known

    def summary(self) -> dict[str, int]:
        return {"given": self.given, "built": self.built, "without_form": self.without_form,
                "people_without_name": len(self.people_without_name)}


def text_only_forms(items: Sequence[Item]) -> TextForms:
    """The text-only items of ``items``, in order: each person's own ``qa`` items where the data
    has any, else the text-only forms of their image + question items (see the module doc)."""
    with_text = {i.person_id for i in items if i.modality == "qa"}
    out = TextForms()
    missing: dict[str, None] = {}
    for item in items:
        if item.modality == "qa":
            out.items.append(item)
            out.given += 1
        elif item.person_id not in with_text and PERSON_NAME in item.meta:
            name = item.meta[PERSON_NAME]
            if not name:
                missing[item.person_id] = None
                continue
            form = text_only_form(item, name)
            if form is None:
                out.without_form += 1
            else:
                out.items.append(form)
                out.built += 1
    out.people_without_name = list(missing)
    return out


def text_only_items(items: Sequence[Item], needed_by: str, role: str) -> list[Item]:
    """``text_only_forms(items).items`` for a method that needs them (``needed_by``, e.g. "manu"):
    a clear error when some person has neither text-only pairs nor a known name."""
    forms = text_only_forms(items)
    if forms.people_without_name:
        people = forms.people_without_name
        raise TextFormError(
            f"{needed_by} needs text-only {role} items: the training data has no Pure_Text pairs for "
            f"{len(people)} people (e.g. ID {people[0]}) and no person name was found for them ({NO_NAME_HELP})")
    return forms.items


def text_only_train(benchmark: Benchmark, which: str = "forget", needed_by: str | None = None) -> list[Item]:
    """Text-only forms of ``forget_train``/``retain_train``/``finetune_train`` (``which``): the
    data's own text-only pairs, else each image pair with the person named. With ``needed_by``
    (a method's name), a person with neither raises ``TextFormError``."""
    items = getattr(benchmark, f"{which}_train")
    return text_only_items(items, needed_by, which) if needed_by else text_only_forms(items).items
