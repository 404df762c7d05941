"""MLLMU-Bench's evaluation protocol as its ``eval.py`` runs it (``--protocol mllmu``).

- Few-shot, per task: classification shows 1 demonstration profile, fill-in-the-blank 2,
  generation none. Classification shows its demonstrations on the forget, test and retain
  splits only; fill-in-the-blank on all four (eval.py's modes forget/retain_shared/test, and
  retain_celebrity for fill-in-the-blank).
- A demonstration profile is an ID drawn from the evaluated split's own IDs (eval.py: unseeded
  ``random.sample``; we seed it and record the draw). Its demonstrations are the questions of
  that task of the ``Full_Set`` row with that ID, with their correct answers, and the evaluated
  split's questions of that ID are not scored. eval.py looks the ID up in ``Full_Set`` on every
  split, the real-world one (``Retain_Set``) included: a drawn ID that ``Full_Set`` lacks gives
  no demonstration and skips nothing, and where ``Retain_Set`` reuses a ``Full_Set`` ID, the
  celebrity is skipped and the fictitious profile of that ID is shown. So is it here. (On
  classification of the real-world split the profile is still drawn and skipped, though no
  demonstration is shown, as in eval.py.)
- The prompt text of eval.py (written for LLaVA-1.5; ``eval_prompt``), for families whose
  adapter lists ``"mllmu"`` in ``benchmark_prompts``. Other families (Qwen: MLLMU-Bench has no
  Qwen prompt) keep their chat template, demonstrations becoming earlier chat turns.
"""
from __future__ import annotations

from typing import Sequence

from .items import OPTION_KEYS, Item
from .layouts import GENERATION_INSTRUCTION, TEXT_GENERATION_INSTRUCTION
from .prompts import mcq_prompt

PROTOCOL = "mllmu"
# eval.py's LLaVA branch (Idefics2 draws 1 fill-in-the-blank profile). The LLaVA classification
# count went from 2 to 1 in commit 5762ad6: with 2, LLaVA's prompt grew too long (issue #2).
FEW_SHOT_PROFILES = {"mcq": 1, "cloze": 2, "generation": 0}
DEMONSTRATION_SPLITS = {"mcq": ("forget", "test", "retain"), "cloze": ("forget", "test", "retain", "real_world"),
                        "generation": ()}
MAX_NEW_TOKENS = 50  # eval.py's greedy generation length, every task


def _options(item: Item) -> str:
    return "".join(f"{key}: {item.options[key]}\n" for key in OPTION_KEYS)


def _demonstration(demo: Item, image_token: str) -> str:
    if demo.task == "mcq":
        head = f"USER: {image_token}\n" if demo.modality == "vqa" else "USER:\n"
        return f"{head}Question: {demo.question}\n{_options(demo)}Correct Answer: {demo.answer}\n"
    if demo.task == "cloze":
        head = f"USER:{image_token}\n" if demo.modality == "vqa" else "USER:\n"
        return f"{head}{demo.question}\nCorrect Answer: {demo.answer}\n"
    raise ValueError(f"MLLMU-Bench shows no {demo.task} demonstrations (only classification and fill-in-the-blank)")


def eval_prompt(item: Item, demos: Sequence[Item] = (), image_token: str = "<image>") -> str:
    """eval.py's prompt for ``item`` after ``demos``, character for character (``image_token``
    where the image goes). Items carry their task's instruction as the loader writes them."""
    prefix = "".join(_demonstration(d, image_token) for d in demos)
    head = f"USER: {image_token}\n" if item.modality == "vqa" else "USER:\n"
    if item.task == "mcq":
        return f"{prefix}{head}{mcq_prompt(item.question, item.options or {})}\nASSISTANT:"
    if item.task == "cloze":
        return f"{prefix}{head}{item.question}\nASSISTANT:"
    if item.task == "generation":
        if demos:
            raise ValueError("MLLMU-Bench's generation prompt has no demonstrations")
        if item.modality == "vqa":
            return f"USER: {image_token}\n{item.question}\nASSISTANT: "  # eval.py's trailing space
        question = item.question.removesuffix(f"\n{GENERATION_INSTRUCTION}")
        return f"USER: {question}\n{TEXT_GENERATION_INSTRUCTION}\nASSISTANT:"
    raise ValueError(f"MLLMU-Bench has no prompt for task {item.task!r}")
