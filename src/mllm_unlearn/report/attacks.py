"""The attack battery and forgetting certificate in the reports (markdown, HTML, comparison columns)."""
from __future__ import annotations

import html
from typing import Any, Sequence

from ..eval.attacks.base import accuracy_table
from .common import figure_html, html_table, new_figure, png_data, run_label, stage_note

PROBE_LABELS = {
    "plain": "none (the model's own answers)",
    "quant_8bit": "quantization, 8-bit RTN",
    "quant_4bit": "quantization, 4-bit RTN",
    "quant_bnb_nf4": "quantization, bitsandbytes NF4",
    "logit_lens": "logit lens, best layer",
    "prompt_in_context": "prompt: the person's other facts in context",
    "prompt_prefix": "prompt: pre-committing answer prefix",
    "prompt_other_photo": "prompt: another photo of the person",
    "name_to_facts": "cross-modal: name → facts",
    "portrait_to_name": "cross-modal: portrait → name",
    "facts_to_name": "cross-modal: facts → name",
    "benign_relearn": "benign relearning (retain people only)",
}


def _fmt(value: Any, pattern: str = "{:.1f}") -> str:
    return "–" if value is None else pattern.format(value)


def battery(results: dict[str, Any]) -> dict[str, Any]:
    """``results["robustness"]["attacks"]`` (empty when the run has no battery)."""
    stages = results.get("robustness", {}).get("attacks") or {}
    return stages if isinstance(stages, dict) else {}


def lens_curve(results: dict[str, Any], stage: str = "unlearned") -> list[dict[str, float]]:
    """The logit lens's forget accuracy per decoder layer (``{"vqa", "qa", "all"}`` each) of the unlearned
    or the vanilla model; empty without a logit-lens stage."""
    return battery(results).get("logit_lens", {}).get("figures", {}).get("curve", {}).get(stage, {}).get("forget", [])


def probe_table(results: dict[str, Any]) -> dict[str, Any]:
    """probe -> stage -> group -> modality -> accuracy (%), over every finished attack's records."""
    return accuracy_table([r for outcome in battery(results).values() if isinstance(outcome, dict)
                           for r in outcome.get("records", [])])


def _forget(table: dict[str, Any], probe: str, modality: str, stage: str = "unlearned") -> float | None:
    return table.get(probe, {}).get(stage, {}).get("forget", {}).get(modality)


def headline(results: dict[str, Any], stage: str = "unlearned") -> dict[str, dict[str, float | None]]:
    """The battery's headline figures per modality (forget people, the unlearned model or, with
    ``stage="vanilla"``, the vanilla model under the same attacks): accuracy after 8-bit and 4-bit
    quantization, best-layer logit lens, the best prompt attack, benign relearning, and the
    certified-forgotten people (count and out of how many; unlearned only)."""
    table = probe_table(results)
    certificate = battery(results).get("certificate", {})
    out: dict[str, dict[str, float | None]] = {}
    for modality in ("vqa", "qa"):
        prompts = [v for v in (_forget(table, p, modality, stage) for p in ("prompt_in_context", "prompt_prefix",
                                                                              "prompt_other_photo")) if v is not None]
        summary = certificate.get("summary", {}).get(modality, {}) if stage == "unlearned" else {}
        out[modality] = {"plain": _forget(table, "plain", modality, stage),
                         "quant_8bit": _forget(table, "quant_8bit", modality, stage),
                         "quant_4bit": _forget(table, "quant_4bit", modality, stage),
                         "logit_lens": _forget(table, "logit_lens", modality, stage),
                         "prompt": max(prompts) if prompts else None,
                         "benign_relearn": _forget(table, "benign_relearn", modality, stage),
                         "forgotten": summary.get("forgotten"), "people": summary.get("people"),
                         "still_known": summary.get("still_known"), "undetermined": summary.get("undetermined")}
    return out


COLUMNS = (("quant_8bit", "8-bit quantized"), ("quant_4bit", "4-bit quantized"), ("logit_lens", "logit lens"),
           ("prompt", "prompt attack"), ("benign_relearn", "benign relearning"))


def summary_cells(results: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Comparison columns (header, cells): forget accuracy under each attack and the certified-forgotten
    people, "VQA · QA" each."""
    figures = headline(results)
    header = [f"forget acc. {label} (VQA · QA)" for _, label in COLUMNS] + ["certified forgotten (VQA · QA)"]
    if not battery(results):
        return header, ["–"] * len(header)
    cells = [" · ".join(_fmt(figures[m][key]) for m in ("vqa", "qa")) for key, _ in COLUMNS]
    cells.append(" · ".join(f"{figures[m]['forgotten']}/{figures[m]['people']}"
                            + (f" ({figures[m]['undetermined']} undetermined)" if figures[m].get("undetermined") else "")
                            if figures[m]["people"] else "–" for m in ("vqa", "qa")))
    return header, cells


def battery_seconds(results: dict[str, Any]) -> tuple[float, float]:
    """(the battery's seconds, the run's total seconds) from ``cost.wall_time_s``."""
    timings = results.get("cost", {}).get("wall_time_s", {})
    return sum(v for k, v in timings.items() if k.startswith("attack: ")), sum(timings.values())


def probe_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per probe: unlearned forget VQA, QA; vanilla forget VQA, QA; retain control VQA, QA; chance."""
    table = probe_table(results)
    chances = {r["probe"]: r["chance"] for outcome in battery(results).values() if isinstance(outcome, dict)
               for r in outcome.get("records", [])}
    rows = []
    for probe in [p for p in PROBE_LABELS if p in table] + sorted(p for p in table if p not in PROBE_LABELS):
        cell = table[probe]
        rows.append([PROBE_LABELS.get(probe, probe),
                     *[_fmt(cell.get("unlearned", {}).get("forget", {}).get(m)) for m in ("vqa", "qa")],
                     *[_fmt(cell.get("vanilla", {}).get("forget", {}).get(m)) for m in ("vqa", "qa")],
                     *[_fmt(cell.get("unlearned", {}).get("retain", {}).get(m)) for m in ("vqa", "qa")],
                     _fmt(chances.get(probe))])
    return rows


PROBE_HEADER = ["attack (probe)", "forget VQA", "forget QA", "vanilla forget VQA", "vanilla forget QA",
                "retain control VQA", "retain control QA", "chance (%)"]


def notes(results: dict[str, Any]) -> list[str]:
    """Sentences on the attacks' own figures, and on attacks that did not run."""
    stages = battery(results)
    out = []
    for name in ("quantization", "logit_lens", "prompt", "cross_modal", "benign_relearn"):
        outcome = stages.get(name)
        if outcome is None:
            continue
        note = stage_note(outcome)
        if note:
            out.append(f"{name}: {note}")
            continue
        figures = outcome.get("figures", {})
        if name == "quantization":
            shares = "; ".join(f"{v.removeprefix('quant_')}: VQA {_fmt(c['recovered_share'].get('vqa'), '{:.2f}')}, "
                               f"QA {_fmt(c['recovered_share'].get('qa'), '{:.2f}')}"
                               for v, c in figures.get("variants", {}).items())
            out.append(f"Quantization ({figures.get('scheme')} round-to-nearest, groups of {figures.get('group_size')} "
                       f"weights per row, {figures.get('quantized_modules')} linear layers"
                       f"{' incl. the vision tower' if figures.get('towers') else ' of the language model'}): share of "
                       f"the forgotten accuracy that returns, {shares}."
                       + (f" bitsandbytes skipped: {figures['bitsandbytes_skipped']}." if figures.get("bitsandbytes_skipped")
                          else ""))
        elif name == "logit_lens":
            curve = figures.get("curve", {}).get("unlearned", {}).get("forget", [])
            out.append(f"Logit lens: best layer {figures.get('best_layer')} of {figures.get('layers')} (0 = the first "
                       "decoder layer's output); forget accuracy (all) per layer: "
                       + ", ".join(_fmt(point.get("all")) for point in curve) + ".")
        elif name == "prompt" and figures.get("unknown_prefix_words"):
            out.append(f"Prompt prefix {figures.get('prefix')!r}: the tokenizer does not know "
                       f"{', '.join(figures['unknown_prefix_words'])} (read as unknown tokens).")
        elif name == "cross_modal" and figures.get("skipped"):
            out.append(f"Cross-modal name probes: {figures['skipped']}.")
        elif name == "cross_modal" and figures.get("mean_rank"):
            ranks = figures["mean_rank"]
            out.append(f"Cross-modal name probes: the person's own name's mean rank among {figures.get('candidates')} "
                       f"candidates (chance {(figures.get('candidates', 0) + 1) / 2:g}; {figures.get('candidates')} = "
                       "singled out, their name scored lowest), forget people unlearned / vanilla: "
                       + "; ".join(f"{probe.replace('_', ' ')} {_fmt(by.get('unlearned', {}).get('forget'))} / "
                                   f"{_fmt(by.get('vanilla', {}).get('forget'))}" for probe, by in ranks.items()) + ".")
        elif name == "benign_relearn":
            out.append(f"Benign relearning: {figures.get('steps')} steps of {figures.get('fine_tuning')} fine-tuning "
                       f"(lr {figures.get('lr')}) on {figures.get('trained_people')} retain people outside the control.")
    return out


def certificate_rows(certificate: dict[str, Any]) -> list[list[str]]:
    def verdict(cell: dict[str, Any] | None) -> str:
        if not cell:
            return "–"
        if cell["verdict"] in ("still known", "still recalls"):  # "still recalls": older certificates
            return "still known: " + ", ".join(cell["still_recalls"])
        if cell["verdict"] == "forgotten" and cell.get("undetermined_under"):
            return "forgotten (undecided under " + ", ".join(cell["undetermined_under"]) + ")"
        return cell["verdict"]

    rows = []
    for person, entry in sorted(certificate.get("people", {}).items()):
        label = f"{person} ({entry['name']})" if entry.get("name") else person
        rows.append([label, *[verdict(entry["modalities"].get(m)) for m in ("vqa", "qa")]])
    return rows


def _summary_text(cell: dict[str, Any]) -> str:
    if "still_known" not in cell:  # an older certificate: forgotten or not only
        return f"{cell['forgotten']} of {cell['people']} forgotten"
    return (f"{cell['forgotten']} forgotten, {cell['still_known']} still known, {cell['undetermined']} undetermined "
            f"(of {cell['people']})")


def certificate_lines(certificate: dict[str, Any]) -> list[str]:
    """The certificate's summary sentences."""
    summary = certificate.get("summary", {})
    lines = ["Verdicts: " + "; ".join(f"{m.upper()} {_summary_text(c)}" for m, c in summary.items() if c.get("people"))
             + "."]
    undetermined = sum(c.get("undetermined", 0) for c in summary.values())
    if undetermined:
        lines.append(f"Undetermined ({undetermined}): the probes had too few questions (or no informative probe) to "
                     "tell forgotten from still known at the stated power; this is no evidence of forgetting.")
    control = certificate.get("control", {}).get("modalities", {})
    if control:
        lines.append("Retain control (the unlearned model still recalls the control people the vanilla model recalls): "
                     + "; ".join(f"{m.upper()} {c['still_recalled']} of {c['recalled_by_vanilla']} "
                                 f"({'passed' if c['passed'] else 'FAILED' if c['passed'] is False else 'inconclusive'})"
                                 for m, c in control.items()) + ".")
    if certificate.get("model_broken"):
        lines.append("**The model was broken rather than unlearned**: it no longer recalls the retain control either, so "
                     "failing to recall the forget people is no evidence of unlearning.")
    uninformative = {m: p for m, p in certificate.get("uninformative", {}).items() if p}
    if uninformative:
        lines.append("Left out as uninformative (the vanilla model does not recall the forget people through them "
                     "either): " + "; ".join(f"{m.upper()} {', '.join(p)}" for m, p in uninformative.items()) + ".")
    lines.append(f"Rule: {certificate.get('rule')}.")
    return lines


def attacks_markdown(results: dict[str, Any]) -> list[str]:
    stages = battery(results)
    if not stages:
        return []
    lines = ["", "## Attack battery: does forgotten knowledge come back?", ""]
    if stage_note(stages):
        return lines + [stage_note(stages) or ""]
    lines += ["Classification accuracy (%) on the forget people's questions under each attack, the vanilla model under "
              "the same attack (positive control) and the retain control people (should stay high).", "",
              "| " + " | ".join(PROBE_HEADER) + " |", "|---|" + "---|" * (len(PROBE_HEADER) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in probe_rows(results)]
    lines += [""] + [f"- {note}" for note in notes(results)]
    certificate = stages.get("certificate", {})
    lines += ["", "## Forgetting certificate", ""]
    if stage_note(certificate):
        return lines + [stage_note(certificate) or ""]
    lines += certificate_lines(certificate) + ["", "| Person | VQA | QA |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in certificate_rows(certificate)]
    lines += ["", "Per person and probe (accuracy, questions, p-value, power, reason): `certificate.json`."]
    return lines


def cost_line(results: dict[str, Any]) -> list[str]:
    spent, total = battery_seconds(results)
    if not spent:
        return []
    return [f"Attack battery: {spent:.1f} s of the run's {total:.1f} s ({100 * spent / total:.0f}%; without it the run "
            f"took {total - spent:.1f} s, so the battery added {100 * spent / max(total - spent, 1e-9):.0f}%)."]


def lens_plot(runs: Sequence[dict[str, Any]]) -> str | None:
    """The logit lens curve over layers (forget accuracy, unlearned solid, vanilla dashed)."""
    with_curve = [r for r in runs if battery(r).get("logit_lens", {}).get("figures", {}).get("curve")]
    if not with_curve:
        return None
    fig, axes = new_figure(9, 3.2, 2)
    for ax, modality in zip(axes, ("vqa", "qa")):
        for r in with_curve:
            for stage, style in (("unlearned", "-"), ("vanilla", "--")):
                points = lens_curve(r, stage)
                if points and (stage == "unlearned" or r is with_curve[0]):
                    ax.plot(range(len(points)), [p.get(modality) for p in points], style, marker="o",
                            label=run_label(r) if stage == "unlearned" else "vanilla")
        layers = max(len(lens_curve(r)) for r in with_curve)
        ax.set_xticks(range(layers))
        ax.axhline(25.0, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"forget {modality.upper()}")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
    return png_data(fig)


def attacks_html(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The battery's HTML: per run (one run: the probe table and the certificate), and the lens curve."""
    with_battery = [r for r in runs if battery(r)]
    if not with_battery:
        return []
    parts = ["<h2>Attack battery and forgetting certificate</h2>"]
    for r in with_battery:
        stages = battery(r)
        title = f"<h3>{html.escape(run_label(r))}</h3>" if len(runs) > 1 else ""
        if stage_note(stages):
            parts.append(f"{title}<p class='skipped'>{html.escape(stage_note(stages) or '')}</p>")
            continue
        parts += [title, html_table(PROBE_HEADER, probe_rows(r), "attacks"),
                  *[f"<p class='note'>{html.escape(n)}</p>" for n in notes(r)]]
        certificate = stages.get("certificate", {})
        if stage_note(certificate):
            parts.append(f"<p class='skipped'>{html.escape(stage_note(certificate) or '')}</p>")
        elif certificate:
            parts += [f"<p class='note'>{html.escape(line.replace('**', ''))}</p>" for line in certificate_lines(certificate)]
            parts.append(html_table(["person", "VQA", "QA"], certificate_rows(certificate), "certificate"))
        parts += [f"<p class='note'>{html.escape(line)}</p>" for line in cost_line(r)]
    parts.append(figure_html(lens_plot(runs), "Logit lens: forget accuracy when each decoder layer's last state is read "
                              "through the final norm and output head (solid: unlearned, dashed: vanilla, dotted: chance)",
                              "logit-lens"))
    return parts
