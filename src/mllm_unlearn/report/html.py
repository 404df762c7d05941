"""results.json (one run or several) -> a self-contained HTML report and a comparison markdown.

Plots are drawn with matplotlib's Agg backend and embedded as base64 PNGs, so one file can be
mailed or opened offline. Everything is read from results.json alone, so any set of runs
(any benchmark whose figures are split -> modality -> metric) can be compared.
"""
from __future__ import annotations

import html
import json
import statistics
from typing import Any, Sequence

from ..eval.knowledge import right_of
from ..eval.tradeoff import CHANCE_ACCURACY
from ..eval.verdicts import STILL_KNOWN, counts, per_person_verdicts
from .attacks import attacks_html, battery, summary_cells
from .common import (
    COLORS,
    METRICS,
    MODALITY_LABELS,
    SPLIT_LABELS,
    STYLE,
    VANILLA_COLOR,
    figure_html,
    html_table,
    new_figure,
    png_data,
    run_label,
    stage_note,
)
from .markdown import clear_tables, per_person_table, stopped_lines, training_warning_lines

# The headline metric of a figures cell: the first of these it has (else its first number).
HEADLINE = ("mcq_accuracy", "cloze_accuracy", "rougeL_f", "prob", "truth_ratio", "rougeL_recall")
METRIC_LABELS = {key: label for key, label, _ in METRICS}
GENERALISATION_LABELS = {"forget": "forget (original)", "image_only": "transformed image only",
                         "question_only": "paraphrased question only", "test": "test (both)"}
ATTACK_LABELS = {"loss": "LOSS", "zlib": "zlib"}






def headline_metric(figures: dict[str, Any]) -> str | None:
    keys = [k for split in figures.values() for cell in split.values() for k, v in cell.items()
            if isinstance(v, (int, float)) and not k.endswith("_count")]
    return next((k for k in HEADLINE if k in keys), keys[0] if keys else None)


def _cell(figures: dict[str, Any], split: str, modality: str, metric: str) -> float | None:
    value = figures.get(split, {}).get(modality, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mia_auc(results: dict[str, Any], stage: str = "unlearned", attack: str = "loss") -> float | None:
    mia = results.get("robustness", {}).get("mia", {})
    return mia.get(stage, {}).get("auc", {}).get(attack)


def relearned_accuracy(results: dict[str, Any], modality: str = "all") -> tuple[float | None, float | None]:
    """(forget accuracy on the unseen forget people before the attack, after its last step)."""
    curve = results.get("robustness", {}).get("relearn", {}).get("forget_accuracy")
    if not curve:
        return None, None
    return curve[0].get(modality), curve[-1].get(modality)






def _modalities(runs: Sequence[dict[str, Any]]) -> list[str]:
    found = {m for r in runs for split in r["vanilla"]["figures"].values() for m in split}
    return [m for m in ("vqa", "qa") if m in found] + sorted(found - {"vqa", "qa"})


def _splits(runs: Sequence[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for r in runs:
        for split in r["vanilla"]["figures"]:
            if split not in found:
                found.append(split)
    return found


def tradeoff_plot(runs: Sequence[dict[str, Any]], metric: str) -> str | None:
    """Forget (x, lower is better) vs retain (y, higher is better) of every run, per modality."""
    modalities = _modalities(runs)
    if not all("forget" in r["vanilla"]["figures"] and "retain" in r["vanilla"]["figures"] for r in runs):
        return None
    fig, axes = new_figure(5.2 * len(modalities), 4.4, len(modalities))
    for ax, modality in zip(axes, modalities):
        vanilla = runs[0]["vanilla"]["figures"]
        vx, vy = _cell(vanilla, "forget", modality, metric), _cell(vanilla, "retain", modality, metric)
        if vx is not None and vy is not None:
            ax.scatter([vx], [vy], marker="*", s=220, color=VANILLA_COLOR, label="vanilla", zorder=3)
        for k, r in enumerate(runs):
            x = _cell(r["unlearned"]["figures"], "forget", modality, metric)
            y = _cell(r["unlearned"]["figures"], "retain", modality, metric)
            if x is None or y is None:
                continue
            ax.scatter([x], [y], s=80, color=COLORS[k % len(COLORS)], label=run_label(r), zorder=3)
            ax.annotate(r["config"]["method"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
        if metric.endswith("accuracy"):  # one fixed scale, so panels and reports compare at a glance
            ax.set_xlim(0, 102)
            ax.set_ylim(0, 102)
            ax.axvline(25.0, color="#999999", linestyle=":", linewidth=1)
            ax.text(26, 2, "chance", color="#777777", fontsize=8, va="bottom")
        ax.set_xlabel(f"forget: {METRIC_LABELS.get(metric, metric)}  (lower = more forgotten)")
        ax.set_ylabel(f"retain: {METRIC_LABELS.get(metric, metric)}  (higher = kept)")
        ax.set_title(f"Trade-off, {MODALITY_LABELS.get(modality, modality)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return png_data(fig)


def split_bars_plot(runs: Sequence[dict[str, Any]], metric: str) -> str:
    """Per split: vanilla and every run's unlearned value, one panel per modality."""
    modalities, splits = _modalities(runs), _splits(runs)
    fig, axes = new_figure(max(5.5, 1.6 * len(splits) * (1 + len(runs)) / 2) * len(modalities) / 1.4, 4.2, len(modalities))
    series = [("vanilla", runs[0]["vanilla"]["figures"], VANILLA_COLOR)] + \
             [(run_label(r), r["unlearned"]["figures"], COLORS[k % len(COLORS)]) for k, r in enumerate(runs)]
    width = 0.8 / len(series)
    for ax, modality in zip(axes, modalities):
        for s, (label, figures, color) in enumerate(series):
            values = [_cell(figures, split, modality, metric) for split in splits]
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(splits))]
            ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=label, color=color)
        ax.set_xticks(range(len(splits)))
        ax.set_xticklabels([SPLIT_LABELS.get(s, s).split(" (")[0] for s in splits])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(MODALITY_LABELS.get(modality, modality))
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)  # headroom: the legend sits above the bars
        ax.legend(fontsize=8, ncol=min(4, len(series)), loc="upper center")
    return png_data(fig)


def generalisation_plot(runs: Sequence[dict[str, Any]]) -> str | None:
    if not any(r.get("generalisation", {}).get("unlearned") for r in runs):
        return None
    modalities = [m for m in ("vqa", "qa") if any(m in r.get("generalisation", {}).get("unlearned", {}) for r in runs)]
    fig, axes = new_figure(5.8 * len(modalities), 4.2, len(modalities))
    series = [("vanilla", runs[0]["generalisation"].get("vanilla", {}), VANILLA_COLOR)] + \
             [(run_label(r), r.get("generalisation", {}).get("unlearned", {}), COLORS[k % len(COLORS)])
              for k, r in enumerate(runs)]
    width = 0.8 / len(series)
    for ax, modality in zip(axes, modalities):
        conditions = [c for c in GENERALISATION_LABELS if any(c in g.get(modality, {}) for _, g, _ in series)]
        for s, (label, data, color) in enumerate(series):
            xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(conditions))]
            ax.bar(xs, [data.get(modality, {}).get(c, 0.0) for c in conditions], width, label=label, color=color)
        ax.set_xticks(range(len(conditions)))
        ax.set_xticklabels([GENERALISATION_LABELS[c].replace(" only", "\nonly") for c in conditions], fontsize=8)
        ax.set_ylabel("Classification acc. (%)")
        ax.set_title(f"Forget people: {MODALITY_LABELS.get(modality, modality)}")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)  # headroom: the legend sits above the bars
        ax.legend(fontsize=8, ncol=min(4, len(series)), loc="upper center")
    return png_data(fig)


def mia_plot(runs: Sequence[dict[str, Any]]) -> str | None:
    with_mia = [r for r in runs if "unlearned" in r.get("robustness", {}).get("mia", {})]
    if not with_mia:
        return None
    attacks = list(with_mia[0]["robustness"]["mia"]["unlearned"]["auc"])
    series = [("vanilla", with_mia[0]["robustness"]["mia"]["vanilla"]["auc"], VANILLA_COLOR)] + \
             [(run_label(r), r["robustness"]["mia"]["unlearned"]["auc"], COLORS[runs.index(r) % len(COLORS)])
              for r in with_mia]
    fig, (ax,) = new_figure(max(6.0, 1.3 * len(attacks) * len(series) / 2), 4.0)
    width = 0.8 / len(series)
    for s, (label, aucs, color) in enumerate(series):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(attacks))]
        ax.bar(xs, [aucs.get(a, 0.0) for a in attacks], width, label=label, color=color)
    ax.axhline(0.5, color="#999999", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(attacks)))
    ax.set_xticklabels([ATTACK_LABELS.get(a, a.replace("min_k_", "Min-") + ("%" if a.startswith("min_k_") else ""))
                        for a in attacks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUC (forget vs held-out)")
    ax.set_title("Membership inference")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return png_data(fig)


def relearn_plot(runs: Sequence[dict[str, Any]]) -> str | None:
    with_curve = [r for r in runs if r.get("robustness", {}).get("relearn", {}).get("forget_accuracy")]
    if not with_curve:
        return None
    modalities = [m for m in ("vqa", "qa") if m in with_curve[0]["robustness"]["relearn"]["forget_accuracy"][0]]
    fig, axes = new_figure(5.2 * len(modalities), 4.2, len(modalities))
    for ax, modality in zip(axes, modalities):
        for r in with_curve:
            data = r["robustness"]["relearn"]
            color = COLORS[runs.index(r) % len(COLORS)]
            ax.plot(data["steps"], [p[modality] for p in data["forget_accuracy"]], marker="o", color=color,
                    label=f"{run_label(r)}: forget (unseen people)")
            if data.get("retain_accuracy"):
                ax.plot(data["steps"], [p.get(modality) for p in data["retain_accuracy"]], linestyle=":", color=color,
                        label=f"{run_label(r)}: retain (control)")
            if data.get("shown_accuracy"):
                ax.plot(data["steps"], [p.get(modality) for p in data["shown_accuracy"]], linestyle="-.", color=color,
                        alpha=0.6, label=f"{run_label(r)}: shown forget (positive control)")
        vanilla = with_curve[0]["robustness"]["relearn"]["vanilla_forget_accuracy"].get(modality)
        if vanilla is not None:
            ax.axhline(vanilla, color=VANILLA_COLOR, linestyle="--", linewidth=1, label="vanilla (same questions)")
        ax.set_xlabel("relearning steps on other forget people")
        ax.set_ylabel("Classification acc. (%)")
        ax.set_title(f"Relearning attack, {MODALITY_LABELS.get(modality, modality)}")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_data(fig)


def cost_plot(runs: Sequence[dict[str, Any]]) -> str:
    fig, (time_ax, memory_ax) = new_figure(11.0, max(3.4, 2.0 + 0.45 * len(runs)), 2)
    labels = [run_label(r) for r in runs]
    steps: list[str] = []
    for r in runs:
        steps += [s for s in r.get("cost", {}).get("wall_time_s", {}) if s not in steps]
    left = [0.0] * len(runs)
    for k, step in enumerate(steps):
        values = [r.get("cost", {}).get("wall_time_s", {}).get(step, 0.0) for r in runs]
        time_ax.barh(labels, values, left=left, color=COLORS[k % len(COLORS)], label=step)
        left = [a + b for a, b in zip(left, values)]
    time_ax.set_xlabel("wall time (s)")
    time_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    memory_ax.barh(labels, [r.get("cost", {}).get("peak_memory_mb", 0.0) for r in runs], color=COLORS[0])
    memory_ax.set_xlabel("peak memory (MB)")
    for ax in (time_ax, memory_ax):
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    return png_data(fig)




def summary_rows(runs: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """One row per run (plus vanilla): headline metric per split x modality, MIA AUCs, relearning, cost."""
    modalities, splits = _modalities(runs), _splits(runs)
    columns = [(s, m) for s in splits for m in modalities]
    header = ["run", *[f"{s} {m.upper()}" for s, m in columns], "MIA AUC LOSS", "MIA AUC Min-20%",
              "relearned forget acc.", "wall time (s)", "peak memory (MB)", "forget people still known (VQA · QA)"]
    vanilla = runs[0]["vanilla"]["figures"]
    rows = [["vanilla", *[_fmt(_cell(vanilla, s, m, metric), 3 if "rouge" in metric else 1) for s, m in columns],
             _fmt(mia_auc(runs[0], "vanilla"), 3), _fmt(mia_auc(runs[0], "vanilla", "min_k_20"), 3),
             _fmt(runs[0].get("robustness", {}).get("relearn", {}).get("vanilla_forget_accuracy", {}).get("all")), "", "",
             still_known_cell(runs[0], "vanilla")]]
    for r in runs:
        figures = r["unlearned"]["figures"]
        before, after = relearned_accuracy(r)
        cost = r.get("cost", {})
        rows.append([run_label(r), *[_fmt(_cell(figures, s, m, metric), 3 if "rouge" in metric else 1) for s, m in columns],
                     _fmt(mia_auc(r), 3), _fmt(mia_auc(r, attack="min_k_20"), 3),
                     f"{_fmt(before)} → {_fmt(after)}" if after is not None else "–",
                     _fmt(sum(cost.get("wall_time_s", {}).values()) or None), _fmt(cost.get("peak_memory_mb"), 0),
                     still_known_cell(r, "unlearned")])
    if any(battery(r) for r in runs):  # the attack battery's columns (vanilla row: none)
        header = header + summary_cells(runs[0])[0]
        rows = [row + (["–"] * len(summary_cells(runs[0])[0]) if k == 0 else summary_cells(runs[k - 1])[1])
                for k, row in enumerate(rows)]
    return header, rows


def still_known_cell(results: dict[str, Any], stage: str) -> str:
    """"k/n · k/n": forget people still known in VQA and QA (eval/verdicts.py's rule)."""
    vanilla_predictions = results.get("vanilla", {}).get("predictions", [])
    verdicts = per_person_verdicts(results.get(stage, {}).get("predictions", []), vanilla_predictions, CHANCE_ACCURACY)
    if not verdicts:
        return "–"
    return " · ".join(f"{counts(v[m]['verdict'] for v in verdicts.values() if m in v)[STILL_KNOWN]}/{len(verdicts)}"
                      for m in ("vqa", "qa") if any(m in v for v in verdicts.values()))


def seed_group_key(results: dict[str, Any]) -> str:
    """What must match for two runs to be repeats of one experiment: everything a user sets
    except the seed (which also draws the built-in world and its vanilla model) and the name."""
    config = results["config"]
    method_config = {k: v for k, v in (config.get("method_config") or {}).items() if k not in ("seed", "progress")}
    evaluation = {k: v for k, v in (config.get("eval") or {}).items() if k not in ("seed", "progress")}
    return json.dumps([results.get("protocol"), config.get("method"), config.get("family"), config.get("forget_percent"),
                       bool(config.get("edit_source")), method_config, evaluation], sort_keys=True, default=str)


def seed_groups(runs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped by ``seed_group_key``, in order of first appearance; only groups of two or more."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(seed_group_key(r), []).append(r)
    return [g for g in groups.values() if len(g) > 1]


def _mean_sd(values: Sequence[float | None], digits: int) -> str:
    """``mean ± sample standard deviation`` over the values present (– if none)."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    if len(present) == 1:
        return _fmt(present[0], digits)
    return f"{statistics.mean(present):.{digits}f} ± {statistics.stdev(present):.{digits}f}"


def seed_rows(runs: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """For each group of repeated runs (``seed_groups``): the vanilla and the unlearned model's
    headline metric per split x modality, MIA AUC and relearned accuracy, as mean ± sd."""
    modalities, splits = _modalities(runs), _splits(runs)
    columns = [(s, m) for s in splits for m in modalities]
    digits = 3 if "rouge" in metric else 1
    header = ["runs (seeds)", *[f"{s} {m.upper()}" for s, m in columns], "MIA AUC LOSS", "relearned forget acc."]
    rows = []
    for group in seed_groups(runs):
        seeds = ", ".join(str(r["config"].get("seed")) for r in group)
        method = group[0]["config"].get("method")
        for stage, label in (("vanilla", f"vanilla ({seeds})"), ("unlearned", f"{method} ({seeds})")):
            relearned = [relearned_accuracy(r)[1] if stage == "unlearned" else
                         r.get("robustness", {}).get("relearn", {}).get("vanilla_forget_accuracy", {}).get("all")
                         for r in group]
            rows.append([label, *[_mean_sd([_cell(r[stage]["figures"], s, m, metric) for r in group], digits)
                                  for s, m in columns],
                         _mean_sd([mia_auc(r, stage) for r in group], 3), _mean_sd(relearned, 1)])
    return header, rows


SEED_NOTE = ("Runs that differ only in seed and name, as mean ± sample standard deviation over the runs. "
             "With the built-in world the seed also draws the world and trains its own vanilla model, so the "
             "vanilla row varies too.")


def detail_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One run: vanilla → unlearned for every split x modality x metric (report.md's table)."""
    vanilla, unlearned = results["vanilla"]["figures"], results["unlearned"]["figures"]
    metrics = [m for m in METRICS if any(m[0] in c for s in vanilla.values() for c in s.values())]
    header = ["split", "modality", *[label for _, label, _ in metrics]]
    rows = []
    for split, by_modality in vanilla.items():
        for modality, cell in by_modality.items():
            after = unlearned.get(split, {}).get(modality, {})
            rows.append([SPLIT_LABELS.get(split, split), MODALITY_LABELS.get(modality, modality),
                         *[f"{_fmt(cell.get(k), 3 if 'rouge' in k or 'bleu' in k else 1)} → "
                           f"{_fmt(after.get(k), 3 if 'rouge' in k or 'bleu' in k else 1)}" for k, _, _ in metrics]])
    return header, rows






def render_html(runs: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """The HTML report of one run (with its full table) or a comparison of several."""
    if not runs:
        raise ValueError("a report needs at least one run")
    metric = headline_metric(runs[0]["vanilla"]["figures"]) or "mcq_accuracy"
    metric_label = METRIC_LABELS.get(metric, metric)
    first = runs[0]["config"]
    title = title or (f"Unlearning report: {first['name']}" if len(runs) == 1 else f"Unlearning comparison: {len(runs)} runs")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    benchmarks = sorted({r["config"]["benchmark_name"] for r in runs})
    families = sorted({r["config"]["family"] for r in runs})
    parts.append(f"<p class='note'>Benchmark {html.escape(', '.join(benchmarks))}; model family "
                 f"{html.escape(', '.join(families))}; headline metric: {html.escape(metric_label)}. "
                 "Forget and test should fall, retain and real-world should stay.</p>")
    for line in (training_warning_lines(runs[0]["config"]) if len(runs) == 1 else []):
        parts.append(f"<p class='skipped'>{html.escape(line.removeprefix('- ').replace('**', ''))}</p>")
    for line in (stopped_lines(runs[0]) if len(runs) == 1 else []):
        parts.append(f"<p class='skipped'><strong>{html.escape(line.replace('**', ''))}</strong></p>")
    if len(runs) == 1 and runs[0].get("knowledge_check", {}).get("modalities"):
        check = runs[0]["knowledge_check"]
        parts += ["<h2>The vanilla model's knowledge of the forget people</h2>",
                  html_table(["modality", "forget accuracy (%)", "right / items", "chance (%)", "binomial p",
                              "threshold (%)", "knows them"],
                         [[m, _fmt(c["accuracy"], 1), right_of(c), _fmt(c["chance"], 1),
                           "–" if c.get("p_value") is None else f"{c['p_value']:.3g}", _fmt(c["threshold"], 1),
                           "yes" if c["passed"] else f"no: {c.get('reason', '')}"] for m, c in check["modalities"].items()],
                         "knowledge"),
                  f"<p class='note'>Measured as {html.escape(check['method'])} on the forget split before unlearning; "
                  f"it must beat chance with one-sided binomial p <= {check.get('alpha', 0.05):g} (with its item count) "
                  f"and reach the threshold, chance + {check['min_knowledge']:g} points."
                  + (" <strong>The vanilla model does not clearly know the forget people; the run went on because of "
                     "--allow-unknown: the figures below do not show forgetting.</strong>"
                     if check.get("proceeded_without_knowledge") else "") + "</p>"]
    header, rows = summary_rows(runs, metric)
    parts += ["<h2>Results</h2>", html_table(header, rows, "results summary"),
              "<p class='note'>MIA AUC: P(held-out item scores as less familiar than a forget item); about 1 = "
              "the forget people are still recognisably trained on, 0.5 = indistinguishable from unseen people. "
              "Relearned forget acc.: accuracy on forget people the relearning attack never showed, before → "
              "after the attack (vanilla row: the vanilla model on the same questions).</p>"]
    if seed_groups(runs):
        header, rows = seed_rows(runs, metric)
        parts += ["<h3>Across seeds</h3>", html_table(header, rows, "results seeds"), f"<p class='note'>{SEED_NOTE}</p>"]
    if len(runs) == 1 and runs[0].get("protocol") == "clear":
        tables = clear_tables(runs[0])
        gold = " (gold: the retain-only model)" if runs[0].get("gold") else ""
        parts += [f"<h3>Every metric, vanilla → unlearned{gold}</h3>", html_table(*tables["tasks"], "results detail"),
                  "<h3>Model utility and forget quality</h3>", html_table(*tables["summary"], "results clear-summary"),
                  *[f"<p class='note'>{html.escape(note)}</p>" for note in tables["notes"]]]
    elif len(runs) == 1:
        header, rows = detail_rows(runs[0])
        parts += ["<h3>Every metric, vanilla → unlearned</h3>", html_table(header, rows, "results detail")]
        if runs[0].get("tradeoff"):
            from .markdown import MODALITY_LABELS, TRADEOFF_COLUMNS, TRADEOFF_RULE, hyperparameter_lines, tradeoff_cell, tradeoff_notes

            parts += ["<h3>Trade-off (classification, chance-corrected)</h3>",
                      html_table(["modality"] + [label for _, label in TRADEOFF_COLUMNS],
                             [[MODALITY_LABELS.get(m, m)] + [tradeoff_cell(cell, key) for key, _ in TRADEOFF_COLUMNS]
                              for m, cell in runs[0]["tradeoff"].items()], "tradeoff"),
                      f"<p class='note'>{html.escape(TRADEOFF_RULE)}</p>",
                      *[f"<p class='note'>{html.escape(note)}</p>" for note in tradeoff_notes(runs[0]["tradeoff"])]]
            parts += [f"<p class='note'>{html.escape(line.removeprefix('- '))}</p>"
                      for line in hyperparameter_lines(runs[0]["config"])]
        people = per_person_table(runs[0])
        if people is not None:
            header, rows, summary = people
            parts += ["<h3>Forget people, one by one</h3>", html_table(header, rows, "results people"),
                      f"<p class='note'>{html.escape(summary)} An average can hide a few people who are still "
                      "fully known.</p>"]
    parts += ["<h2>Forget vs retain trade-off</h2>",
              figure_html(tradeoff_plot(runs, metric), f"{metric_label}: forget (x) vs retain (y) per modality; "
                           "best is top-left", "tradeoff"),
              "<h2>Per split</h2>",
              figure_html(split_bars_plot(runs, metric), f"{metric_label} per split, vanilla and unlearned", "splits")]
    generalisation = generalisation_plot(runs)
    if generalisation:
        parts += ["<h2>Generalisation: paraphrased questions and transformed images</h2>",
                  figure_html(generalisation, "Forget people's classification accuracy with the original questions "
                               "and portraits, with only the portrait transformed, with only the question paraphrased, "
                               "and the test split (both)", "generalisation")]
    parts.append("<h2>Membership inference</h2>")
    mia = mia_plot(runs)
    parts.append(figure_html(mia, "AUC of each attack, forget vs held-out people (dashed: 0.5)", "mia") if mia else
                 "".join(f"<p class='skipped'>{html.escape(run_label(r))}: "
                         f"{html.escape(stage_note(r.get('robustness', {}).get('mia', {})) or 'not run')}</p>"
                         for r in runs))
    parts.append("<h2>Relearning attack</h2>")
    relearn = relearn_plot(runs)
    parts.append(figure_html(relearn, "Accuracy on forget people the attack never showed while it fine-tunes the "
                              "unlearned model on other forget people (dotted: retain control; dash-dot: the shown forget people, "
                              "a positive control)", "relearn") if relearn else
                 "".join(f"<p class='skipped'>{html.escape(run_label(r))}: "
                         f"{html.escape(stage_note(r.get('robustness', {}).get('relearn', {})) or 'not run')}</p>"
                         for r in runs))
    parts += attacks_html(runs)
    parts += ["<h2>Cost</h2>", figure_html(cost_plot(runs), "Wall time per pipeline step and the process's peak "
                                            "memory", "cost"),
              html_table(["run", "step", "wall time (s)"],
                     [[run_label(r), step, _fmt(seconds)] for r in runs
                      for step, seconds in r.get("cost", {}).get("wall_time_s", {}).items()], "cost"),
              html_table(["run", "peak memory, whole run (MB)", "peak memory before robustness evaluations (MB)"],
                     [[run_label(r), _fmt(r.get("cost", {}).get("peak_memory_mb"), 0),
                       _fmt(r.get("cost", {}).get("peak_memory_mb_before_robustness"), 0)] for r in runs], "memory")]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def compare_markdown(runs: Sequence[dict[str, Any]], title: str | None = None) -> str:
    """The comparison table (same columns as the HTML summary) as markdown."""
    metric = headline_metric(runs[0]["vanilla"]["figures"]) or "mcq_accuracy"
    header, rows = summary_rows(runs, metric)
    lines = [f"# {title or f'Unlearning comparison: {len(runs)} runs'}", "",
             f"Headline metric: {METRIC_LABELS.get(metric, metric)}; each cell is the unlearned model's value.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if seed_groups(runs):
        header, rows = seed_rows(runs, metric)
        lines += ["", "## Across seeds", "", SEED_NOTE, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
