"""Does the vanilla model know the forget people? Checked before unlearning: unlearning figures
on a model that never knew them measure nothing (a chance-level "forget accuracy" is no success).

Classification accuracy on the forget split, per modality, read off the vanilla evaluation:

- MLLMU-Bench: the multiple-choice accuracy (%) of the ``forget`` split; chance 100 / options (25%).
- CLEAR (no multiple-choice questions on the forget people): an item is right when its answer is
  more likely (lower answer NLL) than every perturbed answer **and**, for the face-recognition
  items (``forget_facerec``) where a greedy generation was made, the generation names the person
  (their name in it, letters and digits compared, case ignored): a model that scores the right
  name above the perturbed names but says another name does not recognise the face. Chance
  100 / (1 + number of perturbed answers), averaged over the items (the generation condition only
  makes a hit by chance rarer, so the test is conservative). The record keeps each task's count.

A modality passes when both hold:

- its accuracy is significantly above chance: one-sided binomial test of the right answers out
  of its item count against chance, p <= ``ALPHA`` (0.05); 7 of 16 right (43.8%) at chance 25%
  has p = 0.08 and fails, 8 of 16 (50%) has p = 0.027 and passes;
- it reaches chance + ``min_knowledge`` points (``--min-knowledge``, default 15): the smallest
  knowledge worth unlearning, however many items make a smaller excess significant.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from ..data.items import OPTION_KEYS
from .verdicts import is_still_known, p_above_chance

DEFAULT_MIN_KNOWLEDGE = 15.0  # points above chance, on top of the significance test
ALPHA = 0.05  # the one-sided binomial test's level
MODALITY_NAMES = {"vqa": "VQA", "qa": "QA"}
FACE_RECOGNITION_SUFFIX = "_facerec"


class KnowledgeCheckFailed(ValueError):
    """The vanilla model does not clearly know the forget people (``run`` stops; ``--allow-unknown`` goes on)."""


def _letters(text: str) -> str:
    return " ".join(re.findall(r"[0-9a-z]+", text.lower()))


def names_person(generation: str, name: str) -> bool:
    """Whether a generation names the person: their name's letters and digits, in order, case ignored
    (so "O ' Rourke" names O'Rourke)."""
    wanted = _letters(name)
    return bool(wanted) and f" {wanted} " in f" {_letters(generation)} "


def clear_item_right(record: dict[str, Any]) -> bool:
    """A CLEAR forget item is known: its answer beats every perturbed answer, and a face-recognition
    item's generation (where one was made) names the person."""
    beats = record["answer_nll"] < min(record["perturbed_nll"])
    if str(record.get("split", "")).endswith(FACE_RECOGNITION_SUFFIX) and record.get("prediction") is not None:
        return beats and names_person(str(record["prediction"]), str(record["answer"]))
    return beats


def forget_accuracy(vanilla: dict[str, Any], protocol: str) -> dict[str, dict[str, Any]]:
    """Per modality: ``{"accuracy", "chance", "items", "right"}`` on the forget split, from a vanilla
    evaluation (CLEAR: also ``tasks``, each task's right and items)."""
    out: dict[str, dict[str, Any]] = {}
    if protocol == "clear":
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in vanilla.get("predictions", []):
            if str(record.get("split", "")).startswith("forget") and record.get("perturbed_nll"):
                groups.setdefault(record["modality"], []).append(record)
        for modality, records in groups.items():
            tasks: dict[str, dict[str, int]] = {}
            for record in records:
                cell = tasks.setdefault(str(record["split"]), {"right": 0, "items": 0})
                cell["right"] += clear_item_right(record)
                cell["items"] += 1
            right = sum(cell["right"] for cell in tasks.values())
            chance = sum(100.0 / (1 + len(r["perturbed_nll"])) for r in records) / len(records)
            out[modality] = {"accuracy": 100.0 * right / len(records), "chance": chance, "items": len(records),
                             "right": right, "tasks": tasks}
        return out
    for modality, cell in vanilla.get("figures", {}).get("forget", {}).items():
        if cell.get("mcq_accuracy") is not None:
            items = cell.get("mcq_count", cell.get("count"))
            out[modality] = {"accuracy": float(cell["mcq_accuracy"]), "chance": 100.0 / len(OPTION_KEYS), "items": items,
                             "right": None if items is None else round(float(cell["mcq_accuracy"]) * items / 100.0)}
    return out


def knowledge_check(vanilla: dict[str, Any], protocol: str, modalities: Iterable[str],
                    min_knowledge: float = DEFAULT_MIN_KNOWLEDGE, allow_unknown: bool = False) -> dict[str, Any]:
    """The check's record for results.json: per checked modality its accuracy, right answers and item
    count, chance, threshold, binomial p-value, whether it passed and why not; ``passed`` over all;
    ``proceeded_without_knowledge`` when it failed and ``allow_unknown`` let the run go on. No
    classification figure at all: ``skipped``."""
    measured = forget_accuracy(vanilla, protocol)
    checked = {m: measured[m] for m in modalities if m in measured}
    record: dict[str, Any] = {"min_knowledge": min_knowledge, "alpha": ALPHA, "allow_unknown": allow_unknown,
                              "method": "multiple-choice accuracy" if protocol != "clear"
                              else "answer more likely than every perturbed answer (face recognition: and the "
                                   "generation names the person)",
                              "test": f"one-sided binomial test against chance, p <= {ALPHA:g}, and accuracy >= "
                                      f"chance + {min_knowledge:g} points", "modalities": {}}
    if not checked:
        record.update(passed=None, skipped="no classification figure on the forget split (evaluate the mcq task)")
        return record
    for modality, cell in checked.items():
        threshold = cell["chance"] + min_knowledge
        items, right = cell.get("items"), cell.get("right")
        p_value = None if not items or right is None else p_above_chance(right, items, cell["chance"])
        reasons = []
        if p_value is None:
            reasons.append("no item count to test against chance")
        elif p_value > ALPHA:
            reasons.append(f"{right}/{items} right is not significantly above chance (binomial p = {p_value:.3g} "
                           f"> {ALPHA:g})")
        if cell["accuracy"] < threshold:
            reasons.append(f"below chance + {min_knowledge:g} points")
        record["modalities"][modality] = {**cell, "threshold": threshold, "p_value": p_value, "passed": not reasons,
                                          **({"reason": "; ".join(reasons)} if reasons else {})}
    record["passed"] = all(cell["passed"] for cell in record["modalities"].values())
    record["proceeded_without_knowledge"] = not record["passed"] and allow_unknown
    return record


SUMMARY_SPLITS = ("forget", "retain", "real_world")


def knowledge_summary(evaluation: dict[str, Any], protocol: str) -> dict[str, dict[str, dict[str, Any]]]:
    """What a model knows, per split (forget, retain, real-world) and modality: classification accuracy
    (the knowledge check's measure), right answers, items, chance, the one-sided binomial p-value at
    chance and whether it beats chance (p <= ALPHA). ``evaluation``: an Evaluator's (mcq) or a
    ClearEvaluator's results (CLEAR: a split's caption and face-recognition items together)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if protocol == "clear":
        for split in SUMMARY_SPLITS:
            records = [r for r in evaluation.get("predictions", []) if r.get("perturbed_nll")
                       and str(r.get("split", "")).removesuffix(FACE_RECOGNITION_SUFFIX) == split]
            for modality in sorted({r["modality"] for r in records}):
                group = [r for r in records if r["modality"] == modality]
                chance = sum(100.0 / (1 + len(r["perturbed_nll"])) for r in group) / len(group)
                out.setdefault(split, {})[modality] = _summary_cell(sum(clear_item_right(r) for r in group), len(group),
                                                                    chance)
        return out
    for split in SUMMARY_SPLITS:
        for modality, cell in evaluation.get("figures", {}).get(split, {}).items():
            if cell.get("mcq_accuracy") is not None and cell.get("mcq_count"):
                items = int(cell["mcq_count"])
                out.setdefault(split, {})[modality] = _summary_cell(round(cell["mcq_accuracy"] * items / 100.0), items,
                                                                    100.0 / len(OPTION_KEYS))
    return out


def _summary_cell(right: int, items: int, chance: float) -> dict[str, Any]:
    above, p_value = is_still_known(right, items, chance, margin=0.0, alpha=ALPHA)
    return {"accuracy": 100.0 * right / items, "right": right, "items": items, "chance": chance, "p_value": p_value,
            "above_chance": above}


def summary_lines(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per split and modality of ``knowledge_summary``'s figures."""
    return [f"{split} {MODALITY_NAMES.get(modality, modality)}: {cell['accuracy']:.1f}% ({cell['right']}/{cell['items']}), "
            f"chance {cell['chance']:.1f}%, binomial p = {cell['p_value']:.3g}: "
            + ("above chance" if cell["above_chance"] else "NOT significantly above chance")
            for split, by_modality in summary.items() for modality, cell in by_modality.items()]


DEFAULT_ADVICE = ("Fine-tune the model on the benchmark first (`mllm-unlearn finetune --model BASE --benchmark DIR "
                  "--out CKPT`, then `run --model CKPT`)")


def failure_message(record: dict[str, Any], advice: str | None = None) -> str:
    """The one-paragraph error of a failed check; ``advice`` fits how the model was made (DEFAULT_ADVICE)."""
    failing = [(m, c) for m, c in record["modalities"].items() if not c["passed"]]
    parts = [f"{MODALITY_NAMES.get(m, m)} classification accuracy {c['accuracy']:.1f}% ({right_of(c)} items; chance "
             f"{c['chance']:.1f}%, threshold {c['threshold']:.1f}%): {c.get('reason', 'below the threshold')}"
             for m, c in failing]
    return ("knowledge check: the vanilla model does not know the forget people: " + "; ".join(parts)
            + f" on the forget split (it must beat chance with binomial p <= {record.get('alpha', ALPHA):g} and by "
            f"--min-knowledge {record['min_knowledge']:g} points). Unlearning it would report forgetting of knowledge "
            f"that was never there. {advice or DEFAULT_ADVICE}; or lower --min-knowledge, or pass --allow-unknown to "
            "go on anyway (the report marks it).")


def right_of(cell: dict[str, Any]) -> str:
    """"right/items" of a checked modality ("?" for what a record lacks)."""
    right = "?" if cell.get("right") is None else cell["right"]
    return f"{right}/{cell.get('items') or '?'}"


def knowledge_markdown(record: dict[str, Any] | None) -> list[str]:
    """The report's section on the vanilla model's knowledge of the forget people."""
    if not record:
        return []
    lines = ["", "## The vanilla model's knowledge of the forget people", ""]
    if record.get("skipped"):
        return lines + [f"Not checked: {record['skipped']}."]
    lines += ["| Modality | Forget accuracy (%) | Right / items | Chance (%) | Binomial p | Threshold (%) | Knows them |",
              "|---|---|---|---|---|---|---|"]
    for modality, cell in record["modalities"].items():
        p_value = "–" if cell.get("p_value") is None else f"{cell['p_value']:.3g}"
        lines.append(f"| {MODALITY_NAMES.get(modality, modality)} | {cell['accuracy']:.1f} | {right_of(cell)} | "
                     f"{cell['chance']:.1f} | {p_value} | {cell['threshold']:.1f} | "
                     f"{'yes' if cell['passed'] else '**no**: ' + cell.get('reason', '')} |")
    lines += ["", f"Measured as {record['method']} on the forget split, before unlearning; a modality passes when its "
                  f"accuracy beats chance with one-sided binomial p <= {record.get('alpha', ALPHA):g} (with its item "
                  f"count) and reaches the threshold, chance + {record['min_knowledge']:g} points (--min-knowledge)."]
    tasks = {m: c["tasks"] for m, c in record["modalities"].items() if c.get("tasks")}
    if tasks:
        lines += ["", "Per task: " + "; ".join(f"{MODALITY_NAMES.get(m, m)} " + ", ".join(
            f"{task} {t['right']}/{t['items']}" for task, t in by_task.items()) for m, by_task in tasks.items()) + "."]
    if record.get("proceeded_without_knowledge"):
        lines += ["", "**Warning: the vanilla model does not clearly know the forget people; the run went on because "
                      "of --allow-unknown. The unlearning figures below do not show forgetting.**"]
    return lines


def forget_evaluation(evaluator: Any, benchmark: Any, modalities: Iterable[str]) -> dict[str, Any]:
    """The vanilla evaluation's part the check reads, alone and first, so a model that does not know
    the forget people is stopped before the whole evaluation: MLLMU-Bench's forget-split
    multiple-choice groups of ``modalities`` (the records a whole evaluation gives for them,
    reusable by it: ``Evaluator.evaluate(known=...)``); CLEAR's forget tasks' likelihoods, the
    face-recognition items also with their greedy generation where the run generates (``clear_item_right``
    reads the name it says; the captions' generations it does not read)."""
    from dataclasses import replace

    from .clear import ClearEvaluator

    if isinstance(evaluator, ClearEvaluator):
        forget_tasks = {t: items for t, items in benchmark.eval_splits.items() if t.startswith("forget") and items}
        if not forget_tasks:
            return {"figures": {}, "predictions": []}
        faces = {t: items for t, items in forget_tasks.items() if t.endswith(FACE_RECOGNITION_SUFFIX)}
        captions = {t: items for t, items in forget_tasks.items() if t not in faces}
        parts = [ClearEvaluator(evaluator.vlm, replace(evaluator.cfg, rouge=rouge), share_prompts_with=evaluator)
                 .evaluate(replace(benchmark, eval_splits=tasks))
                 for tasks, rouge in ((captions, False), (faces, evaluator.cfg.rouge)) if tasks]
        return {"protocol": "clear", "figures": {k: v for part in parts for k, v in part["figures"].items()},
                "predictions": [r for part in parts for r in part["predictions"]]}
    return evaluator.evaluate(benchmark, only={("forget", m, "mcq") for m in modalities})
