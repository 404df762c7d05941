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


def render_markdown(results: dict[str, Any]) -> str:
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
    cost = results.get("cost", {})
    if cost:
        lines += ["", "## Cost", "", "| Step | Wall time (s) |", "|---|---|"]
        lines += [f"| {step} | {seconds:.1f} |" for step, seconds in cost.get("wall_time_s", {}).items()]
        lines += ["", f"Peak memory: {cost.get('peak_memory_mb', 0):.0f} MB; parameters changed by the edit: "
                  f"{cost.get('changed_parameters', 0):,}"]
    return "\n".join(lines) + "\n"
