"""Reports of sequence runs (``mllm-unlearn sequence``): per-request tables and curves over requests.

Read from results.json alone (``kind: "sequence"``). ``compare`` of several sequence runs overlays
their curves: one figure per modality, one panel per people group, one line per run.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

from .attacks import attacks_html, attacks_markdown
from .common import COLORS, METRICS, MODALITY_LABELS, STYLE, figure_html, html_table, new_figure, png_data

METRIC_LABELS = {key: label for key, label, _ in METRICS}
# Curves of one run, in legend order: (group in figures, label, line style).
CURVES = (("forgotten", "forgotten so far (this + earlier requests)", "-"),
          ("earlier", "earlier requests only", "--"),
          ("pending", "not yet requested (collateral)", ":"),
          ("retain", "retain", "-"),
          ("real_world", "real-world", "-."))
CURVE_COLORS = {"forgotten": "#c44e52", "earlier": "#dd8452", "pending": "#8172b3", "retain": "#4c72b0",
                "real_world": "#55a868", "undone": "#444444"}
UNDONE_CURVE = ("undone", "undone request (replayed without it)", ":")
TABLE_GROUPS = (("current", "this request"), ("earlier", "earlier requests"), ("forgotten", "forgotten so far"),
                ("pending", "not yet requested"), ("retain", "retain"), ("real_world", "real-world"))
UNDONE_GROUP = ("undone", "undone request")  # a replay's removed request, a column of its own


def table_groups(results: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    if any("undone" in row["figures"] for row in results["sequence"]["requests"]):
        return TABLE_GROUPS + (UNDONE_GROUP,)
    return TABLE_GROUPS
RETAIN_FLOOR = 0.9  # "retain accuracy first below 90% of vanilla"


def is_sequence(results: dict[str, Any]) -> bool:
    return results.get("kind") == "sequence"


def sequence_metric(results: dict[str, Any]) -> str:
    tasks = results["sequence"].get("tasks", ["mcq"])
    return "mcq_accuracy" if "mcq" in tasks else "cloze_accuracy" if "cloze" in tasks else "rougeL_f"


def _value(figures: dict[str, Any], group: str, modality: str, metric: str) -> float | None:
    value = figures.get(group, {}).get(modality, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if metric in ("rougeL_f", "bleu") else f"{value:.1f}"


def label(results: dict[str, Any]) -> str:
    config = results["config"]
    return config["name"] if config["name"] == config["method"] else f"{config['name']} ({config['method']})"


def first_retain_drop(results: dict[str, Any], modality: str, metric: str | None = None,
                      floor: float = RETAIN_FLOOR) -> int | None:
    """The first request (1-based) after which retain ``metric`` is below ``floor`` × vanilla, or None."""
    metric = metric or sequence_metric(results)
    vanilla = _value(results["sequence"]["vanilla"]["figures"], "retain", modality, metric)
    if vanilla is None:
        return None
    for row in results["sequence"]["requests"]:
        value = _value(row["figures"], "retain", modality, metric)
        if value is not None and value < floor * vanilla:
            return row["index"] + 1
    return None


def modalities(results: dict[str, Any]) -> list[str]:
    found = {m for group in results["sequence"]["vanilla"]["figures"].values() for m in group}
    return [m for m in ("vqa", "qa") if m in found]


# --- markdown ------------------------------------------------------------------------------
def request_rows(results: dict[str, Any], metric: str) -> tuple[list[str], list[list[str]]]:
    mods = modalities(results)
    groups = table_groups(results)
    header = ["request", "people"] + [f"{name} {m.upper()}" for _, name in groups for m in mods] + [
        "edit", "unlearn (s)", "evaluate (s)"]
    vanilla = results["sequence"]["vanilla"]["figures"]
    rows = [["vanilla", "–"] + [_fmt(_value(vanilla, g, m, metric), metric) for g, _ in groups for m in mods]
            + ["–", "–", "–"]]
    for row in results["sequence"]["requests"]:
        edit = row.get("edit", {})
        rows.append([str(row["index"] + 1), ", ".join(row["people"])]
                    + [_fmt(_value(row["figures"], g, m, metric), metric) for g, _ in groups for m in mods]
                    + [" + ".join(edit.get("leaf_kinds", [edit.get("kind", "?")])),
                       "reused" if row.get("reused") else f"{row['seconds']['unlearn']:.1f}",
                       f"{row['seconds']['evaluate']:.1f}"])
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def subset_line(results: dict[str, Any]) -> str:
    sizes = results["sequence"]["subsets"]
    parts = []
    for split, per_modality in sizes.items():
        counts = ", ".join(f"{m.upper()} {sum(per_modality[m].values())}" for m in per_modality)
        parts.append(f"{split} {counts}")
    return ("Evaluation subsets (questions, all tasks): " + "; ".join(parts) + ". Forget people: every question; "
            "retain and real-world: a fixed seeded sample, the same after every request.")


def undo_lines(results: dict[str, Any], metric: str) -> list[str]:
    lines: list[str] = []
    edit = results.get("edit") or {}
    exact = edit.get("exact_undo")
    if exact:
        exact_ids = [str(k + 1) for k, ok in enumerate(exact) if ok]
        lines += ["", "## Undo", "",
                  f"Requests whose part can be removed exactly (no later part was computed with it applied): "
                  f"{', '.join(exact_ids) or 'none'} (of {len(exact)} requests). `mllm-unlearn sequence RUN_DIR "
                  "--undo N` writes the edit without request N (for the others: `--replay` runs the later requests again "
                  "without it, exact; `--approximate` subtracts its weight change, task arithmetic)."]
    for record in results["sequence"].get("undo", []):
        lines.append("")
        how = ("exactly, the later requests run again (`" + record["replayed_into"] + "`)" if record.get("replayed_into")
               else "exactly" if record["exact"] else f"approximately ({record.get('approximation')})")
        lines.append(f"- Request {record['request']} ({', '.join(record['people'])}) removed {how}: "
                     f"`{record['edit_path']}`.")
        figures = record.get("figures")
        if figures:
            cells = []
            for group, name in (("undone", "undone request"), ("earlier", "kept requests"), ("retain", "retain"),
                                ("real_world", "real-world")):
                values = "/".join(_fmt(_value(figures, group, m, metric), metric) for m in modalities(results))
                cells.append(f"{name} {values}")
            lines.append(f"  {METRIC_LABELS.get(metric, metric)} (VQA/QA) after the undo: " + "; ".join(cells) + ".")
    return lines


def render_sequence_markdown(results: dict[str, Any], with_attacks: bool = True) -> str:
    config, seq = results["config"], results["sequence"]
    metric = sequence_metric(results)
    done, planned = len(seq["requests"]), len(seq["planned"])
    lines = [f"# Sequential deletion requests: {label(results)}", "",
             f"- Model: `{config['model_path']}` ({config['family']}); benchmark {config['benchmark_name']}; "
             f"method {config['method']} (preset {config.get('preset')}); seed {config['seed']}.",
             f"- Requests: {done} of {planned} done"
             + (f" (from `{config['requests_file']}`)" if config.get("requests_file") else
                " (one per forget person, in the forget split's order)") + "; each computed on "
             + ("the sequential model (all earlier parts applied)" if config.get("context") == "all" else
                "the sequential model for weight-changing methods, on the unedited model for mask and steering "
                "methods (context auto)") + ".",
             f"- {subset_line(results)}",
             f"- Figures: {METRIC_LABELS.get(metric, metric)} after each request, by group of people. "
             "This request's and earlier requests' people should fall and stay down; not-yet-requested, retain "
             "and real-world people should stay."]
    if seq.get("unrequested"):
        lines.append(f"- Forget people never requested: {', '.join(seq['unrequested'])}.")
    for modality in modalities(results):
        drop = first_retain_drop(results, modality, metric)
        lines.append(f"- Retain {modality.upper()} below 90% of vanilla: "
                     + (f"first after request {drop}." if drop else f"never (in {done} requests)."))
    if seq.get("failed"):
        failed = seq["failed"]
        lines.append(f"- **{failed['stage']} failed** ({failed['error']}: {failed['message']}); the rows before it "
                     "are complete.")
    header, rows = request_rows(results, metric)
    lines += ["", "## Per request", ""] + _md_table(header, rows)
    for extra in ("cloze_accuracy", "rougeL_f"):
        if extra != metric and any(_value(r["figures"], "current", m, extra) is not None
                                   for r in seq["requests"] for m in ("vqa", "qa")):
            header, rows = request_rows(results, extra)
            lines += ["", f"### {METRIC_LABELS.get(extra, extra)}", ""] + _md_table(header, rows)
    total = sum(r["seconds"]["unlearn"] + r["seconds"]["evaluate"] for r in seq["requests"])
    if seq["requests"]:
        lines += ["", f"Cost: {total:.1f} s for {done} requests ({total / done:.1f} s per request: unlearning and "
                      "evaluation; the table has each)."]
    lines += undo_lines(results, metric)
    if with_attacks:  # `sequence --attacks`: the battery on the model after the last request
        lines += attacks_markdown(results)
    return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------
def curves_plot(results: dict[str, Any], metric: str) -> str | None:
    """One panel per modality: each group's metric over requests (request 0: the vanilla model)."""
    mods = modalities(results)
    rows = results["sequence"]["requests"]
    if not rows or not mods:
        return None
    fig, axes = new_figure(5.2 * len(mods), 3.8, len(mods))
    vanilla = results["sequence"]["vanilla"]["figures"]
    curves = CURVES + ((UNDONE_CURVE,) if any("undone" in row["figures"] for row in rows) else ())
    for ax, modality in zip(axes, mods):
        for group, name, style in curves:
            xs, ys = [], []
            start = _value(vanilla, "pending" if group in ("forgotten", "earlier") else group, modality, metric)
            if group in ("retain", "real_world", "pending") and start is not None:
                xs, ys = [0], [start]
            for row in rows:
                value = _value(row["figures"], group, modality, metric)
                if value is not None:
                    xs.append(row["index"] + 1)
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, style, marker="o", markersize=3, color=CURVE_COLORS[group], label=name)
        forget_vanilla = _value(vanilla, "pending", modality, metric)
        if forget_vanilla is not None:
            ax.axhline(forget_vanilla, color="#999999", linewidth=0.8, linestyle=(0, (1, 3)),
                       label="vanilla, forget people")
        if metric == "mcq_accuracy":
            ax.axhline(25, color="#bbbbbb", linewidth=0.8, label="chance (25%)")
        if metric.endswith("_accuracy"):
            ax.set_ylim(-2, 102)  # the same scale in every panel and report
        ax.set_title(MODALITY_LABELS.get(modality, modality))
        ax.set_xlabel("requests done (0: vanilla)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_xticks(range(0, len(rows) + 1))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return png_data(fig)


def cost_plot(results: dict[str, Any]) -> str | None:
    rows = results["sequence"]["requests"]
    if not rows:
        return None
    fig, (ax,) = new_figure(7.0, 3.0)
    xs = [r["index"] + 1 for r in rows]
    unlearn = [r["seconds"]["unlearn"] for r in rows]
    ax.bar(xs, unlearn, color=COLORS[0], label="unlearn")
    ax.bar(xs, [r["seconds"]["evaluate"] for r in rows], bottom=unlearn, color=COLORS[1], label="evaluate")
    ax.set_xlabel("request")
    ax.set_ylabel("wall time (s)")
    ax.set_xticks(xs)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return png_data(fig)


def compare_plot(runs: Sequence[dict[str, Any]], modality: str, metric: str) -> str | None:
    """One figure for ``modality``: a panel per group of people, a line per run."""
    if not any(r["sequence"]["requests"] for r in runs):
        return None
    from matplotlib.ticker import MaxNLocator

    groups = [(g, name) for g, name, _ in CURVES]
    fig, axes = new_figure(3.3 * len(groups), 3.4, len(groups))
    for ax, (group, name) in zip(axes, groups):
        for k, run in enumerate(runs):
            vanilla = run["sequence"]["vanilla"]["figures"]
            xs, ys = [], []
            start = _value(vanilla, group, modality, metric)
            if group in ("retain", "real_world", "pending") and start is not None:
                xs, ys = [0], [start]
            for row in run["sequence"]["requests"]:
                value = _value(row["figures"], group, modality, metric)
                if value is not None:
                    xs.append(row["index"] + 1)
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, color=COLORS[k % len(COLORS)], label=label(run))
        if metric == "mcq_accuracy":
            ax.axhline(25, color="#bbbbbb", linewidth=0.8)
        if metric.endswith("_accuracy"):
            ax.set_ylim(-2, 102)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("requests done")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{MODALITY_LABELS.get(modality, modality)}\n{METRIC_LABELS.get(metric, metric)}")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return png_data(fig)


# --- html ----------------------------------------------------------------------------------
def render_sequence_html(runs: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """The HTML report of one sequence run, or the comparison of several (curves overlaid)."""
    if not runs:
        raise ValueError("a report needs at least one run")
    metric = sequence_metric(runs[0])
    title = title or (f"Sequential deletion requests: {label(runs[0])}" if len(runs) == 1 else
                      f"Sequential deletion requests: {len(runs)} runs")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if len(runs) == 1:
        results = runs[0]
        text = render_sequence_markdown(results, with_attacks=False)
        notes = [line[2:] for line in text.splitlines() if line.startswith("- ")]
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
        parts += ["<h2>Curves over requests</h2>",
                  figure_html(curves_plot(results, metric), f"{METRIC_LABELS.get(metric, metric)} after each request, "
                               "per group of people (request 0: the vanilla model)", "curves")]
        header, rows = request_rows(results, metric)
        parts += ["<h2>Per request</h2>", html_table(header, rows, "results sequence")]
        parts += ["<h2>Cost per request</h2>", figure_html(cost_plot(results), "Wall time of each request: "
                                                            "unlearning and evaluation", "cost")]
        undo = undo_lines(results, metric)
        if undo:
            parts += ["<h2>Undo</h2>"] + [f"<p class='note'>{html.escape(line.lstrip('- ').strip())}</p>"
                                          for line in undo if line.strip() and not line.startswith("#")]
        parts += attacks_html(runs)
    else:
        header = ["run", "requests"] + [f"retain {m.upper()} < 90% of vanilla after" for m in ("vqa", "qa")]
        rows = [[label(r), str(len(r["sequence"]["requests"]))]
                + [str(first_retain_drop(r, m, metric) or "never") for m in ("vqa", "qa")] for r in runs]
        parts += ["<h2>Runs</h2>", html_table(header, rows, "results sequence-compare")]
        for modality in ("vqa", "qa"):
            parts += [f"<h2>{html.escape(MODALITY_LABELS.get(modality, modality))}</h2>",
                      figure_html(compare_plot(runs, modality, metric), f"{METRIC_LABELS.get(metric, metric)} over "
                                   "requests, one line per run", f"compare-{modality}")]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def sequence_compare_markdown(runs: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """Per run: the figures after the last request and where retain first falls below 90% of vanilla."""
    metric = sequence_metric(runs[0])
    lines = [f"# {title or f'Sequential deletion requests: {len(runs)} runs'}", "",
             f"{METRIC_LABELS.get(metric, metric)} after the last request done (VQA / QA).", ""]
    header = ["run", "requests", "forgotten so far", "earlier requests", "not yet requested", "retain", "real-world",
              "retain < 90% of vanilla after"]
    rows = []
    for run in runs:
        last = run["sequence"]["requests"][-1]["figures"] if run["sequence"]["requests"] else {}
        cells = ["/".join(_fmt(_value(last, g, m, metric), metric) for m in ("vqa", "qa"))
                 for g in ("forgotten", "earlier", "pending", "retain", "real_world")]
        drops = "/".join(str(first_retain_drop(run, m, metric) or "never") for m in ("vqa", "qa"))
        rows.append([label(run), str(len(run["sequence"]["requests"]))] + cells + [drops])
    return "\n".join(lines + _md_table(header, rows)) + "\n"
