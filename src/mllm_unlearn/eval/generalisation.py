"""Does forgetting generalise? The test split changes two things at once for VQA questions
(paraphrased question *and* transformed image); this separates them.

Per modality, classification accuracy on the forget people's
- ``forget``: the original questions with the original portraits;
- ``image_only`` (VQA): the original questions with the test split's transformed portraits;
- ``question_only`` (VQA): the test split's paraphrased questions with the original portraits;
- ``test``: paraphrased questions (and, for VQA, transformed portraits), the test split as is.
QA questions carry no image, so their test split is a paraphrase only.
"""
from __future__ import annotations

from typing import Any

from ..data.items import Benchmark, Item
from .evaluator import Evaluator


def _accuracy(evaluator: Evaluator, items: list[Item]) -> float | None:
    if not items:
        return None
    records = evaluator.score_group(items, "mcq")
    return 100.0 * sum(bool(r["correct"]) for r in records) / len(records)


def _with_image(item: Item, image: Any, image_key: str | None) -> Item:
    return Item(item.person_id, item.split, item.modality, item.task, item.question, item.answer, image, item.options,
                image_key, dict(item.meta))


def generalisation_breakdown(evaluator: Evaluator, benchmark: Benchmark, edit: Any = None) -> dict[str, dict[str, float]]:
    """Accuracy per modality x condition (see the module docstring); empty if the benchmark has no
    forget and test classification questions."""
    if edit is not None:
        with edit.applied(evaluator.vlm), edit.for_task("mcq"):  # classification questions only
            return generalisation_breakdown(evaluator, benchmark)
    forget = [i for i in benchmark.eval_splits.get("forget", []) if i.task == "mcq"]
    test = [i for i in benchmark.eval_splits.get("test", []) if i.task == "mcq"]
    if not forget or not test:
        return {}
    out: dict[str, dict[str, float]] = {}
    for modality in ("vqa", "qa"):
        f_items = [i for i in forget if i.modality == modality]
        t_items = [i for i in test if i.modality == modality]
        cell = {"forget": _accuracy(evaluator, f_items), "test": _accuracy(evaluator, t_items)}
        if modality == "vqa" and f_items and t_items:
            original = {i.person_id: (i.image, i.image_key) for i in f_items}
            transformed = {i.person_id: (i.image, i.image_key) for i in t_items}
            cell["image_only"] = _accuracy(evaluator, [_with_image(i, *transformed[i.person_id]) for i in f_items
                                                       if i.person_id in transformed])
            cell["question_only"] = _accuracy(evaluator, [_with_image(i, *original[i.person_id]) for i in t_items
                                                          if i.person_id in original])
        cleaned = {k: v for k, v in cell.items() if v is not None}
        if cleaned:
            out[modality] = cleaned
    return out
