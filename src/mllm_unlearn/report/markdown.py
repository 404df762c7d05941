"""results.json -> report.md: vanilla vs unlearned, per split x modality x metric."""
from __future__ import annotations

from typing import Any

SPLIT_LABELS = {"forget": "Forget", "test": "Test (paraphrased, transformed images)", "retain": "Retain",
                "real_world": "Real-world"}
MODALITY_LABELS = {"vqa": "VQA (image + text)", "qa": "QA (text only)"}
METRICS = (("mcq_accuracy", "Classification acc. (%)", "{:.1f}"), ("cloze_accuracy", "Fill-in-blank acc. (%)", "{:.1f}"),
           ("rougeL_f", "Generation ROUGE-L F", "{:.3f}"), ("bleu", "Generation BLEU", "{:.3f}"))


def _fmt(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


CLEAR_LABELS = {"forget": "Forget (captions)", "forget_facerec": "Forget FaceRec", "retain": "Retain (captions)",
                "retain_facerec": "Retain FaceRec", "real_faces": "Real Faces", "real_world": "Real World"}
CLEAR_METRICS = (("prob", "Prob.", "{:.3f}"), ("rougeL_recall", "ROUGE-L recall", "{:.3f}"),
                 ("truth_ratio", "Truth ratio", "{:.3f}"))


def render_clear(results: dict[str, Any]) -> list[str]:
    """CLEAR's table: per task Prob / ROUGE-L recall / truth-ratio score, then MU and FQ."""
    vanilla, unlearned = results["vanilla"], results.get("unlearned", {})
    gold = results.get("gold")
    lines = ["Each cell: vanilla → unlearned" + (" (gold: retain-only model)" if gold else "") +
             ". Truth ratio: mean min(TR, 1/TR) on forget tasks (1 = cannot tell truth from perturbation), "
             "mean max(0, 1 − 1/TR) elsewhere.", ""]
    figures = vanilla["figures"]
    metrics = [m for m in CLEAR_METRICS if any(m[0] in cell for task in figures.values() for cell in task.values())]
    lines.append("| Task | Modality | " + " | ".join(m[1] for m in metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for task, by_modality in figures.items():
        for modality, cell in by_modality.items():
            after = unlearned.get("figures", {}).get(task, {}).get(modality, {})
            reference = (gold or {}).get("figures", {}).get(task, {}).get(modality, {})
            cells = []
            for key, _, pattern in metrics:
                text = f"{_fmt(cell.get(key), pattern)} → {_fmt(after.get(key), pattern)}"
                if gold:
                    text += f" ({_fmt(reference.get(key), pattern)})"
                cells.append(text)
            lines.append(f"| {CLEAR_LABELS.get(task, task)} | {MODALITY_LABELS.get(modality, modality)} | "
                         + " | ".join(cells) + " |")
    lines += ["", "| Summary | Vanilla | Unlearned |" + (" Gold |" if gold else ""), "|---|---|---|" + ("---|" if gold else "")]
    for key, label in (("model_utility", "Model utility (harmonic mean, non-forget tasks)"),
                       ("forget_quality", "Forget quality (KS p-value of forget-caption TR vs gold)"),
                       ("ks_statistic", "KS statistic (forget captions)"),
                       ("forget_quality_facerec", "Forget quality, face recognition")):
        row = [vanilla.get("summary", {}).get(key), unlearned.get("summary", {}).get(key)]
        if gold:
            row.append(gold.get("summary", {}).get(key))
        if all(v is None for v in row[:2]):
            continue
        lines.append(f"| {label} | " + " | ".join(_fmt(v, "{:.3g}") for v in row) + " |")
    if not gold:
        lines += ["", "No gold model (a checkpoint was given without `--gold-model`): forget quality is not computed."]
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    if results.get("protocol") == "clear":
        config = results["config"]
        lines = [f"# Unlearning report: {config['name']}", "",
                 f"- Method: **{config['method']}** on `{config['benchmark_name']}` (CLEAR protocol), model family "
                 f"**{config['family']}** (`{config['model_path']}`)",
                 f"- Gold model (retain split only): `{config.get('gold_model_path')}`; seed {config['seed']}", ""]
        return "\n".join(lines + render_clear(results) + _cost_lines(results)) + "\n"
    config = results["config"]
    vanilla = results["vanilla"]["figures"]
    unlearned = results.get("unlearned", {}).get("figures", {})
    lines = [
        f"# Unlearning report: {config['name']}",
        "",
        f"- Method: **{config['method']}** on `{config['benchmark_name']}`, model family **{config['family']}**"
        f" (`{config['model_path']}`)",
        f"- Seed {config['seed']}; classification scorer `{config['eval']['scorer']}`, few-shot {config['eval']['few_shot']}",
        "",
        "Each cell: vanilla → unlearned. Forget and test should fall; retain and real-world should stay.",
        "",
    ]
    metrics = [m for m in METRICS if any(m[0] in cell for split in vanilla.values() for cell in split.values())]
    lines.append("| Split | Modality | " + " | ".join(m[1] for m in metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for split, by_modality in vanilla.items():
        for modality, cell in by_modality.items():
            after = unlearned.get(split, {}).get(modality, {})
            cells = [f"{_fmt(cell.get(key), pattern)} → {_fmt(after.get(key), pattern)}" for key, _, pattern in metrics]
            lines.append(f"| {SPLIT_LABELS.get(split, split)} | {MODALITY_LABELS.get(modality, modality)} | " + " | ".join(cells) + " |")
    diagnostics = results["vanilla"].get("diagnostics", {}).get("image_swap")
    if diagnostics:
        lines += ["", "## Does the image carry the identity?", "",
                  "VQA classification accuracy of the vanilla model with each portrait swapped for another person's "
                  "(chance is 25%):", ""]
        lines += [f"- {key.replace('_vqa_mcq_accuracy', '')}: {value:.1f}%" for key, value in diagnostics.items()]
    lines += _cost_lines(results)
    return "\n".join(lines) + "\n"


def _cost_lines(results: dict[str, Any]) -> list[str]:
    cost = results.get("cost", {})
    if not cost:
        return []
    lines = ["", "## Cost", "", "| Step | Wall time (s) |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in cost.get("wall_time_s", {}).items()]
    lines += ["", f"Peak memory: {cost.get('peak_memory_mb', 0):.0f} MB; parameters changed by the edit: "
              f"{cost.get('changed_parameters', 0):,}"]
    return lines
