"""Does the vanilla model know the forget people? Checked before unlearning: unlearning figures
on a model that never knew them measure nothing (a chance-level "forget accuracy" is no success).

Classification accuracy on the forget split, per modality, read off the vanilla evaluation the
run computes anyway (no second evaluation):

- MLLMU-Bench: the multiple-choice accuracy (%) of the ``forget`` split; chance 100 / options (25%).
- CLEAR (no multiple-choice questions on the forget people): the share of items of the forget
  tasks whose answer is more likely (lower answer NLL) than every perturbed answer; chance
  100 / (1 + number of perturbed answers), averaged over the items.

A modality passes when its accuracy is at least chance + ``min_knowledge`` points.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..data.items import OPTION_KEYS

DEFAULT_MIN_KNOWLEDGE = 15.0  # points above chance
MODALITY_NAMES = {"vqa": "VQA", "qa": "QA"}


class KnowledgeCheckFailed(ValueError):
    """The vanilla model does not clearly know the forget people (``run`` stops; ``--allow-unknown`` goes on)."""


def forget_accuracy(vanilla: dict[str, Any], protocol: str) -> dict[str, dict[str, float]]:
    """Per modality: ``{"accuracy", "chance", "items"}`` on the forget split, from a vanilla evaluation."""
    out: dict[str, dict[str, float]] = {}
    if protocol == "clear":
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in vanilla.get("predictions", []):
            if str(record.get("split", "")).startswith("forget") and record.get("perturbed_nll"):
                groups.setdefault(record["modality"], []).append(record)
        for modality, records in groups.items():
            right = sum(r["answer_nll"] < min(r["perturbed_nll"]) for r in records)
            chance = sum(100.0 / (1 + len(r["perturbed_nll"])) for r in records) / len(records)
            out[modality] = {"accuracy": 100.0 * right / len(records), "chance": chance, "items": len(records)}
        return out
    for modality, cell in vanilla.get("figures", {}).get("forget", {}).items():
        if cell.get("mcq_accuracy") is not None:
            out[modality] = {"accuracy": float(cell["mcq_accuracy"]), "chance": 100.0 / len(OPTION_KEYS),
                             "items": cell.get("mcq_count", cell.get("count"))}
    return out


def knowledge_check(vanilla: dict[str, Any], protocol: str, modalities: Iterable[str],
                    min_knowledge: float = DEFAULT_MIN_KNOWLEDGE, allow_unknown: bool = False) -> dict[str, Any]:
    """The check's record for results.json: per checked modality its accuracy, chance, threshold
    and whether it passed; ``passed`` over all; ``proceeded_without_knowledge`` when it failed
    and ``allow_unknown`` let the run go on. No classification figure at all: ``skipped``."""
    measured = forget_accuracy(vanilla, protocol)
    checked = {m: measured[m] for m in modalities if m in measured}
    record: dict[str, Any] = {"min_knowledge": min_knowledge, "allow_unknown": allow_unknown,
                              "method": "multiple-choice accuracy" if protocol != "clear"
                              else "answer more likely than every perturbed answer", "modalities": {}}
    if not checked:
        record.update(passed=None, skipped="no classification figure on the forget split (evaluate the mcq task)")
        return record
    for modality, cell in checked.items():
        threshold = cell["chance"] + min_knowledge
        record["modalities"][modality] = {**cell, "threshold": threshold, "passed": cell["accuracy"] >= threshold}
    record["passed"] = all(cell["passed"] for cell in record["modalities"].values())
    record["proceeded_without_knowledge"] = not record["passed"] and allow_unknown
    return record


def failure_message(record: dict[str, Any]) -> str:
    failing = [(m, c) for m, c in record["modalities"].items() if not c["passed"]]
    parts = [f"{MODALITY_NAMES.get(m, m)} classification accuracy {c['accuracy']:.1f}% (chance {c['chance']:.1f}%, "
             f"threshold {c['threshold']:.1f}%)" for m, c in failing]
    return ("knowledge check: the vanilla model does not know the forget people: " + "; ".join(parts)
            + f" on the forget split (threshold = chance + --min-knowledge {record['min_knowledge']:g} points). "
            "Unlearning it would report forgetting of knowledge that was never there. Fine-tune the model on the "
            "benchmark first (`mllm-unlearn finetune --model BASE --benchmark DIR --out CKPT`, then `run --model CKPT`), "
            "lower --min-knowledge, or pass --allow-unknown to go on anyway (the report marks it).")


def knowledge_markdown(record: dict[str, Any] | None) -> list[str]:
    """The report's section on the vanilla model's knowledge of the forget people."""
    if not record:
        return []
    lines = ["", "## The vanilla model's knowledge of the forget people", ""]
    if record.get("skipped"):
        return lines + [f"Not checked: {record['skipped']}."]
    lines += ["| Modality | Forget accuracy (%) | Chance (%) | Threshold (%) | Knows them |", "|---|---|---|---|---|"]
    for modality, cell in record["modalities"].items():
        lines.append(f"| {MODALITY_NAMES.get(modality, modality)} | {cell['accuracy']:.1f} | {cell['chance']:.1f} | "
                     f"{cell['threshold']:.1f} | {'yes' if cell['passed'] else '**no**'} |")
    lines += ["", f"Measured as {record['method']} on the forget split, before unlearning; threshold = chance + "
                  f"{record['min_knowledge']:g} points."]
    if record.get("proceeded_without_knowledge"):
        lines += ["", "**Warning: the vanilla model does not clearly know the forget people; the run went on because "
                      "of --allow-unknown. The unlearning figures below do not show forgetting.**"]
    return lines


def forget_evaluation(evaluator: Any, benchmark: Any, modalities: Iterable[str]) -> dict[str, Any]:
    """The vanilla evaluation's part the check reads, alone and first, so a model that does not know
    the forget people is stopped before the whole evaluation: MLLMU-Bench's forget-split
    multiple-choice groups of ``modalities`` (the records a whole evaluation gives for them,
    reusable by it: ``Evaluator.evaluate(known=...)``); CLEAR's forget tasks' likelihoods, without
    generating (the check reads none of its ROUGE)."""
    from dataclasses import replace

    from .clear import ClearEvaluator

    if isinstance(evaluator, ClearEvaluator):
        forget_tasks = {t: items for t, items in benchmark.eval_splits.items() if t.startswith("forget") and items}
        if not forget_tasks:
            return {"figures": {}, "predictions": []}
        likelihoods = ClearEvaluator(evaluator.vlm, replace(evaluator.cfg, rouge=False), share_prompts_with=evaluator)
        return likelihoods.evaluate(replace(benchmark, eval_splits=forget_tasks))
    return evaluator.evaluate(benchmark, only={("forget", m, "mcq") for m in modalities})
