"""A sweep's own report: its Pareto front as a table and a plot (``mllm-unlearn sweep``'s
sweep.md and sweep.html)."""
from __future__ import annotations

import json
from typing import Any

from ..data.validation import describe_validation
from .common import STYLE, figure_html, html_table, new_figure, png_data


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _front_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["trial", "values", "forget efficacy", "retention", "harmonic mean",
              "VQA eff./ret.", "QA eff./ret.", "chosen"]
    chosen = (summary.get("chosen") or {}).get("number")
    rows = []
    for t in summary["front"]:
        cells = [str(t["number"]), json.dumps(t["values"], sort_keys=True), _f(t["objectives"]["forget_efficacy"]),
                 _f(t["objectives"]["retention"]), _f((t["overall"] or {}).get("harmonic_mean"))]
        for modality in ("vqa", "qa"):
            cell = (t["tradeoff"] or {}).get(modality, {})
            cells.append(f"{_f(cell.get('forget_efficacy'), 2)} / {_f(cell.get('retention'), 2)}")
        cells.append("★" if t["number"] == chosen else "")
        rows.append(cells)
    return header, rows


def sweep_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Sweep: {summary['method']}", "",
             f"- Study `{summary['study']}` in `{summary['storage']}`: {len(summary['trials'])} finished trials",
             f"- Measured on {describe_validation(summary['validation'])}; classification accuracy only (likelihood "
             f"scorer), chance {summary['chance_accuracy']:.0f}%",
             "- Objectives (maximised): chance-corrected forget efficacy and retention (mean of retain and real-world), "
             "each averaged over VQA and QA", f"- Chosen: {summary['rule']}", ""]
    if summary.get("chosen"):
        lines += [f"Preset: `{summary['preset']}` (trial {summary['chosen']['number']}): "
                  f"`{json.dumps(summary['chosen']['values'], sort_keys=True)}`", ""]
    header, rows = _front_rows(summary)
    lines += ["## Pareto front", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def front_plot(summary: dict[str, Any]) -> str | None:
    """Every trial's (forget efficacy, retention), the front joined, the chosen point starred (base64 PNG)."""
    trials = [t for t in summary["trials"] if t["objectives"]]
    if not trials:
        return None
    fig, (ax,) = new_figure(5.5, 4.2)
    ax.scatter([t["objectives"]["forget_efficacy"] for t in trials], [t["objectives"]["retention"] for t in trials],
               color="#999999", label="trial")
    front = sorted(summary["front"], key=lambda t: t["objectives"]["forget_efficacy"])
    ax.plot([t["objectives"]["forget_efficacy"] for t in front], [t["objectives"]["retention"] for t in front],
            "o-", color="#1f77b4", label="Pareto front")
    if summary.get("chosen"):
        chosen = summary["chosen"]["objectives"]
        ax.scatter([chosen["forget_efficacy"]], [chosen["retention"]], marker="*", s=250, color="#d62728",
                   zorder=5, label="chosen (preset)")
    ax.set_xlabel("forget efficacy (chance-corrected)")
    ax.set_ylabel("retention (retain, real-world)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{summary['method']}: {len(trials)} trials")
    return png_data(fig)


def sweep_html(summary: dict[str, Any]) -> str:
    import html

    header, rows = _front_rows(summary)
    all_header = ["trial", "values", "forget efficacy", "retention", "harmonic mean"]
    all_rows = [[str(t["number"]), json.dumps(t["values"], sort_keys=True), _f(t["objectives"]["forget_efficacy"]),
                 _f(t["objectives"]["retention"]), _f((t["overall"] or {}).get("harmonic_mean"))]
                for t in summary["trials"] if t["objectives"]]
    title = f"Sweep: {summary['method']}"
    heading = sweep_markdown(summary).split("## Pareto front")[0].splitlines()[1:]
    notes = "".join(f"<p class='note'>{html.escape(line.removeprefix('- ').replace('`', ''))}</p>"
                    for line in heading if line.strip())
    return "\n".join([
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>", notes,
        "<h2>Pareto front</h2>", html_table(header, rows, "front"),
        figure_html(front_plot(summary), "Forget efficacy (x) vs retention (y) of every trial; best is top-right",
                     "front"),
        "<h2>Every trial</h2>", html_table(all_header, all_rows, "trials"), "</body></html>"])
