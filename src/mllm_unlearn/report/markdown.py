"""results.json -> report.md: vanilla vs unlearned, per split x modality x metric."""
from __future__ import annotations

from typing import Any

from ..data.validation import describe_validation
from ..eval.knowledge import knowledge_markdown
from ..eval.tradeoff import CHANCE_ACCURACY
from ..eval.verdicts import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_MIN_POWER,
    FORGOTTEN,
    STILL_KNOWN,
    UNDETERMINED,
    counts,
    per_person_verdicts,
)
from .attacks import attacks_markdown, cost_line
from .common import METRICS, MODALITY_LABELS, SPLIT_LABELS, stage_note


def _fmt(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


CLEAR_LABELS = {"forget": "Forget (captions)", "forget_facerec": "Forget FaceRec", "retain": "Retain (captions)",
                "retain_facerec": "Retain FaceRec", "real_faces": "Real Faces", "real_world": "Real World"}
CLEAR_METRICS = (("prob", "Prob.", "{:.3f}"), ("rougeL_recall", "ROUGE-L recall", "{:.3f}"),
                 ("truth_ratio", "Truth ratio", "{:.3f}"))


FEW_ITEMS = 20  # a figure from fewer items carries a warning in both reports
FEW_ITEMS_WARNING = f"⚠ fewer than {FEW_ITEMS} items"
CLEAR_SUMMARY = (("model_utility", "Model utility (harmonic mean, non-forget tasks)"),
                 ("forget_quality", "Forget quality (KS p-value of forget-caption TR vs gold)"),
                 ("ks_statistic", "KS statistic (forget captions)"),
                 ("forget_quality_facerec", "Forget quality, face recognition"),
                 ("ks_statistic_facerec", "KS statistic (face recognition)"))


def _items_cell(count: Any) -> str:
    if not isinstance(count, int):
        return "–"
    return f"{count} {FEW_ITEMS_WARNING}" if count < FEW_ITEMS else str(count)


def _task_count(results: dict[str, Any], task: str) -> int | None:
    counts = [cell.get("count") for cell in results["vanilla"]["figures"].get(task, {}).values()]
    found = [c for c in counts if isinstance(c, int)]
    return sum(found) if found else None


def clear_tables(results: dict[str, Any]) -> dict[str, Any]:
    """CLEAR's figures for both reports: ``tasks`` (header, rows: per task and modality every metric,
    vanilla → unlearned (gold), and its item count), ``summary`` (header, rows: model utility, forget
    quality, KS statistics with the items behind each) and ``notes`` (warnings and explanations)."""
    vanilla, unlearned = results["vanilla"], results.get("unlearned", {})
    gold = results.get("gold")
    figures = vanilla["figures"]
    metrics = [m for m in CLEAR_METRICS if any(m[0] in cell for task in figures.values() for cell in task.values())]
    task_header = ["Task", "Modality", *[m[1] for m in metrics], "Items"]
    task_rows = []
    few = False
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
            few |= isinstance(cell.get("count"), int) and cell["count"] < FEW_ITEMS
            task_rows.append([CLEAR_LABELS.get(task, task), MODALITY_LABELS.get(modality, modality), *cells,
                              _items_cell(cell.get("count"))])
    utility_items = sum(_task_count(results, t) or 0 for t in figures if not t.startswith("forget")) or None
    forget_items = {"": _task_count(results, "forget"), "_facerec": _task_count(results, "forget_facerec")}
    summary_header = ["Summary", "Vanilla", "Unlearned", *(["Gold"] if gold else []), "Items"]
    summary_rows = []
    notes = []
    for key, label in CLEAR_SUMMARY:
        row = [vanilla.get("summary", {}).get(key), unlearned.get("summary", {}).get(key)]
        if gold:
            row.append(gold.get("summary", {}).get(key))
        if all(v is None for v in row[:2]):
            continue
        items = utility_items if key == "model_utility" else forget_items["_facerec" if key.endswith("_facerec") else ""]
        if key != "model_utility" and isinstance(items, int):
            items_text = f"{items} per model" + (f" {FEW_ITEMS_WARNING}" if items < FEW_ITEMS else "")
            few |= items < FEW_ITEMS
        else:
            items_text = _items_cell(items)
        summary_rows.append([label, *[_fmt(v, "{:.3g}") for v in row], items_text])
    if few:
        notes.append(f"{FEW_ITEMS_WARNING}: a figure from so few items moves a lot with one item; read it as an "
                     "indication, not a measurement.")
    captions = forget_items[""]
    if isinstance(captions, int) and any(row[0].startswith("Forget quality") for row in summary_rows):
        critical = 1.358 * ((2 * captions) / (captions * captions)) ** 0.5
        notes.append(f"Forget quality is a two-sample KS test's p-value over {captions} forget captions per model: at this "
                     f"size it tells the two truth-ratio distributions apart (p < 0.05) only when they differ by a KS "
                     f"statistic of about {min(critical, 1.0):.2f} or more (1.36·√(2/n)), so a high forget quality "
                     "from few items is weak evidence that the model matches the gold model.")
    for stage, figures_of in (("vanilla", vanilla), ("unlearned", unlearned)):
        reason = zero_utility_reason(figures_of)
        if reason:
            notes.append(f"The {stage} model's utility is 0 because {reason}.")
    if not gold:
        notes.append("No gold model (a checkpoint was given without `--gold-model`): forget quality is not computed.")
    return {"tasks": (task_header, task_rows), "summary": (summary_header, summary_rows), "notes": notes}


def zero_utility_reason(evaluation: dict[str, Any]) -> str | None:
    """Why CLEAR's model utility is 0 (a harmonic mean is 0 when any part is): the parts that are 0; None otherwise."""
    if (evaluation.get("summary") or {}).get("model_utility") != 0:
        return None
    zero = [f"{dict((k, label) for k, label, _ in CLEAR_METRICS).get(metric, metric)} on {CLEAR_LABELS.get(task, task)}"
            for task, by_modality in (evaluation.get("figures") or {}).items() if not task.startswith("forget")
            for cell in by_modality.values() for metric in ("prob", "rougeL_recall", "truth_ratio") if cell.get(metric) == 0]
    why = "; ".join(zero) if zero else "a part of it is 0"
    return (f"it is the harmonic mean of the non-forget tasks' Prob, ROUGE-L recall and truth-ratio scores, which is 0 "
            f"when any of them is 0: {why}" + (" (the greedy generations share no word with the answers: the model "
                                                "does not produce them, whatever their likelihoods)"
                                                if any("ROUGE" in z for z in zero) else ""))


def render_clear(results: dict[str, Any]) -> list[str]:
    """CLEAR's table: per task Prob / ROUGE-L recall / truth-ratio score and items, then MU and FQ."""
    tables = clear_tables(results)
    gold = results.get("gold")
    lines = ["Each cell: vanilla → unlearned" + (" (gold: retain-only model)" if gold else "") +
             ". Truth ratio: mean min(TR, 1/TR) on forget tasks (1 = cannot tell truth from perturbation), "
             "mean max(0, 1 − 1/TR) elsewhere.", ""]
    for header, rows in (tables["tasks"], tables["summary"]):
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return lines + [f"- {note}" for note in tables["notes"]]


def _edit_source(config: dict[str, Any]) -> list[str]:
    """The line saying the edit was given (``--edit``), not made by this run."""
    source = config.get("edit_source")
    return [f"- Edit given, not trained by this run: `{source}`"] if source else []


def _protocol_line(eval_cfg: dict[str, Any]) -> str:
    """Which evaluation settings produced the MLLMU-Bench figures (older results: protocol ours)."""
    scorer = f"classification scorer `{eval_cfg['scorer']}`"
    if eval_cfg.get("protocol", "ours") == "mllmu":
        return (f"protocol `mllmu` (MLLMU-Bench's eval.py: few-shot profiles per task from Full_Set, classification 1, "
                f"fill-in-the-blank 2, generation 0, not scored; its LLaVA prompts), {scorer}")
    return f"protocol `ours` (chat template), {scorer}, few-shot {eval_cfg['few_shot']}"


def _vanilla_source(config: dict[str, Any]) -> list[str]:
    source = config.get("vanilla_source")
    return ([f"- Vanilla model: {source}"] if source else []) + training_warning_lines(config)


def training_warning_lines(config: dict[str, Any]) -> list[str]:
    """The vanilla model's training warnings (stages skipped, short of target, flat loss), when any."""
    warnings = config.get("vanilla_training_warnings") or []
    return [f"- **Vanilla model's training warned**: {w}" for w in warnings]


def render_markdown(results: dict[str, Any]) -> str:
    if results.get("protocol") == "clear":
        config = results["config"]
        lines = [f"# Unlearning report: {config['name']}", "",
                 f"- Method: **{config['method']}** on `{config['benchmark_name']}` (CLEAR protocol), model family "
                 f"**{config['family']}** (`{config['model_path']}`)", *_vanilla_source(config), *_edit_source(config),
                 f"- Gold model (retain split only) of forget quality: `{config.get('gold_model_path')}`"
                 + (f" ({(config.get('gold_model') or {}).get('made_by')})" if config.get("gold_model") else "")
                 + f"; seed {config['seed']}", ""]
        lines[-1:-1] = _preset_line(config)
        return "\n".join(lines + [*(["", *stopped_lines(results)] if stopped_lines(results) else [])]
                          + failures_markdown(results) + knowledge_markdown(results.get("knowledge_check"))
                          + ([""] if results.get("knowledge_check") else []) + render_clear(results)
                          + robustness_markdown(results) + _cost_lines(results)) + "\n"
    config = results["config"]
    vanilla = results["vanilla"]["figures"]
    unlearned = results.get("unlearned", {}).get("figures", {})
    lines = [
        f"# Unlearning report: {config['name']}",
        "",
        f"- Method: **{config['method']}** on `{config['benchmark_name']}`, model family **{config['family']}**"
        f" (`{config['model_path']}`)",
        *_vanilla_source(config),
        *_edit_source(config),
        f"- Seed {config['seed']}; {_protocol_line(config['eval'])}",
        *_preset_line(config),
        *hyperparameter_lines(config),
        *(["", *stopped_lines(results)] if stopped_lines(results) else []),
        *failures_markdown(results),
        *knowledge_markdown(results.get("knowledge_check")),
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
    lines += tradeoff_markdown(results)
    diagnostics = results["vanilla"].get("diagnostics", {}).get("image_swap")
    if diagnostics:
        lines += ["", "## Does the image carry the identity?", "",
                  "VQA classification accuracy of the vanilla model with each portrait swapped for another person's "
                  "(chance is 25%):", ""]
        lines += [f"- {key.replace('_vqa_mcq_accuracy', '')}: {value:.1f}%" for key, value in diagnostics.items()]
    lines += per_person_markdown(results)
    lines += robustness_markdown(results)
    lines += attacks_markdown(results)
    lines += _data_notes(config)
    lines += _cost_lines(results)
    return "\n".join(lines) + "\n"


def hyperparameter_lines(config: dict[str, Any]) -> list[str]:
    """Where the method's hyperparameters came from, and which split chose them."""
    if config.get("edit_source"):
        return []
    preset = config.get("preset_file")
    if not preset and config.get("preset"):
        return []  # _preset_line says which built-in preset ran
    if not preset:
        return [f"- Hyperparameters: the tool's defaults for {config['method']} (methods/defaults.py says what "
                "they were chosen on), with any options given on the command line"]
    chosen = (preset.get("chosen_by") or {}).get("trial")
    where = describe_validation(preset["validation"]) if preset.get("validation") else "an unrecorded split"
    left_out = (config.get("benchmark") or {}).get("validation_people_left_out")
    return [f"- Hyperparameters: preset `{preset['path']}`" + (f" (sweep trial {chosen})" if chosen is not None else "")
            + f", chosen on {where}; options given on the command line override it"
            + (f"; {len(left_out)} validation people left out of the retain/real-world figures" if left_out else "")]


TRADEOFF_COLUMNS = (("forget_efficacy", "Forget efficacy"), ("test_efficacy", "Test efficacy"),
                    ("retain_retention", "Retain retention"), ("real_world_retention", "Real-world retention"),
                    ("harmonic_mean", "Harmonic mean"))


def tradeoff_cell(cell: dict[str, Any], key: str) -> str:
    """A trade-off figure, "not measurable" where its vanilla figure does not beat chance, "–" where absent."""
    if cell.get(key) is not None:
        return f"{cell[key]:.2f}"
    return "not measurable" if key in (cell.get("not_measurable") or {}) else "–"


def tradeoff_notes(table: dict[str, Any]) -> list[str]:
    """Why each not-measurable figure is not, per modality, and the item counts behind the others."""
    notes = []
    for modality, cell in table.items():
        reasons = cell.get("not_measurable") or {}
        if reasons:
            notes.append(f"{MODALITY_LABELS.get(modality, modality)}: not measurable: " + "; ".join(
                f"{key.replace('_', ' ')}: {reason}" for key, reason in reasons.items()) + ".")
        items = cell.get("items") or {}
        if items:
            notes.append(f"{MODALITY_LABELS.get(modality, modality)} items (vanilla / unlearned): " + ", ".join(
                f"{SPLIT_LABELS.get(split, split)} {n.get('vanilla')} / {n.get('unlearned')}" for split, n in items.items())
                + ".")
    return notes


TRADEOFF_RULE = ("Forget efficacy = clip((vanilla − acc) / (vanilla − chance), 0, 1), chance 25%; retention = "
                 "clip(acc / vanilla, 0, 1); harmonic mean of forget efficacy and the mean of retain and real-world "
                 "retention. 1 is best everywhere. Each figure only where the vanilla model's accuracy on that split "
                 "beats chance significantly (one-sided binomial test with the split's item count, p <= 0.05); "
                 "otherwise not measurable.")


def tradeoff_markdown(results: dict[str, Any]) -> list[str]:
    """The chance-corrected trade-off table (results["tradeoff"], eval/tradeoff.py), when present."""
    table = results.get("tradeoff")
    if not table:
        return []
    lines = ["", "## Trade-off (classification, chance-corrected)", "", TRADEOFF_RULE, "",
             "| Modality | " + " | ".join(label for _, label in TRADEOFF_COLUMNS) + " |",
             "|---|" + "---|" * len(TRADEOFF_COLUMNS)]
    for modality, cell in table.items():
        lines.append(f"| {MODALITY_LABELS.get(modality, modality)} | "
                     + " | ".join(tradeoff_cell(cell, key) for key, _ in TRADEOFF_COLUMNS) + " |")
    notes = tradeoff_notes(table)
    return lines + (["", *[f"- {note}" for note in notes]] if notes else [])


def _data_notes(config: dict[str, Any]) -> list[str]:
    """What the MLLMU-Bench loader skipped or built (only when it did either)."""
    meta = config.get("benchmark") or {}
    skipped = {k: v for k, v in (meta.get("skipped_metadata") or {}).items() if v}
    forms = meta.get("text_only_forms") or {}
    notes = []
    if skipped:
        notes.append("- Metadata entries skipped (no Question or Answer, as MLLMU-Bench's own loader does): "
                     + ", ".join(f"{config_name} {count}" for config_name, count in skipped.items()))
    if forms.get("built"):
        notes.append(f"- Text-only training forms built from image + question pairs (the person named): "
                     f"{forms['built']}; {forms.get('without_form', 0)} pairs had none")
    return ["", "## Data", "", *notes] if notes else []


def per_person_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]], str] | None:
    """The forget people one by one (header, rows of "vanilla → unlearned" accuracy and the unlearned
    model's verdict per modality, and a summary counting each verdict), or None without item predictions."""
    vanilla_predictions = results["vanilla"].get("predictions", [])
    before = per_person_verdicts(vanilla_predictions, vanilla_predictions, CHANCE_ACCURACY)
    after = per_person_verdicts(results.get("unlearned", {}).get("predictions", []), vanilla_predictions, CHANCE_ACCURACY)
    if not before or not after:
        return None
    modalities = [m for m in ("vqa", "qa") if any(m in v for v in before.values())]
    header = ["Person", *[f"{MODALITY_LABELS.get(m, m)} accuracy (%)" for m in modalities],
              *[f"{MODALITY_LABELS.get(m, m)} verdict" for m in modalities]]

    def accuracy(cell: dict[str, Any] | None) -> str:
        return "–" if cell is None else f"{cell['accuracy']:.0f} ({cell['right']}/{cell['questions']})"

    rows = [[person, *[f"{accuracy(before[person].get(m))} → {accuracy(after.get(person, {}).get(m))}" for m in modalities],
             *[after.get(person, {}).get(m, {}).get("verdict", "–") for m in modalities]] for person in sorted(before)]

    def tally(verdicts: dict[str, dict[str, dict[str, Any]]], modality: str) -> dict[str, int]:
        return counts(v[modality]["verdict"] for v in verdicts.values() if modality in v)

    summary = "; ".join(
        f"{m.upper()} {tally(after, m)[STILL_KNOWN]} still known, {tally(after, m)[FORGOTTEN]} forgotten, "
        f"{tally(after, m)[UNDETERMINED]} undetermined of {len(after)} (vanilla: {tally(before, m)[STILL_KNOWN]} "
        "still known)" for m in modalities)
    return header, rows, (f"Classification accuracy (%) per forget person (right/questions), vanilla → unlearned, and "
                          f"the unlearned model's verdict: {summary}. Still known = accuracy above chance (25%) + "
                          f"{DEFAULT_MARGIN:g} points with binomial p <= {DEFAULT_ALPHA:g}; forgotten = not still "
                          f"known where that test had power >= {DEFAULT_MIN_POWER:g} to catch the vanilla model's own "
                          "accuracy on these questions; undetermined = too few questions for that power (no evidence "
                          "either way).")


def per_person_markdown(results: dict[str, Any]) -> list[str]:
    """An average can hide a few people who are still fully known: the forget people one by one."""
    table = per_person_table(results)
    if table is None:
        return []
    header, rows, summary = table
    return ["", "## Forget people, one by one", "", summary, "", "| " + " | ".join(header) + " |",
            "|---|" + "---|" * (len(header) - 1), *["| " + " | ".join(row) + " |" for row in rows]]


def _cost_lines(results: dict[str, Any]) -> list[str]:
    cost = results.get("cost", {})
    if not cost:
        return []
    lines = ["", "## Cost", "", "| Step | Wall time (s) |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in cost.get("wall_time_s", {}).items()]
    lines += ["", f"Peak memory: {cost.get('peak_memory_mb', 0):.0f} MB; parameters changed by the edit: "
              f"{cost.get('changed_parameters', 0):,}"]
    lines += ["", *cost_line(results)] if cost_line(results) else []
    return lines


GENERALISATION_COLUMNS = (("forget", "forget (original)"), ("image_only", "transformed image only"),
                          ("question_only", "paraphrased question only"), ("test", "test (both)"))




def _preset_line(config: dict[str, Any]) -> list[str]:
    """Which hyperparameter preset the method ran with (runs made before presets record none)."""
    preset = config.get("preset")
    if not preset:
        return []
    meaning = {"tiny": "tuned for the tiny models this tool builds", "paper": "the papers' 7B settings, for a "
               "model this tool did not build", "given": "as given"}.get(preset, preset)
    if preset == "tiny" and config.get("preset_family"):
        meaning += f"; its searched values chosen on the tiny {config['preset_family']} model's validation people"
    return [f"- Hyperparameters: **{preset}** preset ({meaning}), with the run's explicit options on top"]


def stopped_lines(results: dict[str, Any]) -> list[str]:
    """The sentence of a run the knowledge check stopped before unlearning (results["stopped"])."""
    stopped = results.get("stopped")
    if not stopped:
        return []
    return [f"**Stopped at the {stopped.get('stage')}: unlearning, its evaluation and the robustness stages did not "
            f"run.** {stopped.get('reason')}"]


def failures_markdown(results: dict[str, Any]) -> list[str]:
    failures = results.get("failures") or []
    if not failures:
        return []
    return ["", "**Failed stages** (recorded; everything else in this report was measured): "
            + "; ".join(f"{f.get('stage')}: {f.get('error')}" for f in failures)]


def robustness_markdown(results: dict[str, Any]) -> list[str]:
    """Generalisation breakdown, membership inference and the relearning attack, if present."""
    lines: list[str] = []
    generalisation = results.get("generalisation", {})
    if generalisation.get("unlearned"):
        lines += ["", "## Generalisation: paraphrased questions and transformed images", "",
                  "Classification accuracy (%) on the forget people, vanilla → unlearned. The test split changes the "
                  "question (paraphrase) and, for VQA, the portrait; the middle columns change one at a time.", "",
                  "| Modality | " + " | ".join(label for _, label in GENERALISATION_COLUMNS) + " |",
                  "|---|" + "---|" * len(GENERALISATION_COLUMNS)]
        for modality, after in generalisation["unlearned"].items():
            before = generalisation.get("vanilla", {}).get(modality, {})
            cells = [f"{_fmt(before.get(k), '{:.1f}')} → {_fmt(after.get(k), '{:.1f}')}" if k in after else "–"
                     for k, _ in GENERALISATION_COLUMNS]
            lines.append(f"| {MODALITY_LABELS.get(modality, modality)} | " + " | ".join(cells) + " |")
    robustness = results.get("robustness", {})
    mia = robustness.get("mia", {})
    if mia:
        lines += ["", "## Membership inference (forget vs held-out people)", ""]
        if stage_note(mia):
            lines.append(stage_note(mia))
        else:
            counts = mia["unlearned"]["counts"]
            lines += [f"AUC = P(a held-out item looks less familiar than a forget item); {counts['members']} forget and "
                      f"{counts['non_members']} held-out training-form items. About 1: the forget people are still "
                      "recognisably trained on; 0.5: indistinguishable from people never seen; well below 0.5: "
                      "unlearning overshot.", "",
                      "| Attack | Vanilla AUC | Unlearned AUC | Unlearned VQA | Unlearned QA |", "|---|---|---|---|---|"]
            for attack, value in mia["unlearned"]["auc"].items():
                by_modality = mia["unlearned"].get("by_modality", {})
                lines.append(f"| {attack} | {mia['vanilla']['auc'][attack]:.3f} | {value:.3f} | "
                             f"{_fmt(by_modality.get('vqa', {}).get(attack), '{:.3f}')} | "
                             f"{_fmt(by_modality.get('qa', {}).get(attack), '{:.3f}')} |")
    relearn = robustness.get("relearn", {})
    if relearn:
        lines += ["", "## Relearning attack", ""]
        if stage_note(relearn):
            lines.append(stage_note(relearn))
        else:
            cfg = relearn["config"]
            mode = relearn.get("fine_tuning", "full")  # runs before the LoRA option: full fine-tuning
            lines += [f"The unlearned model fine-tuned ({mode}) for {relearn['steps'][-1]} steps (lr {cfg['lr']}, batch "
                      f"{cfg['batch_size']}) on the training items of {len(relearn['people']['shown'])} forget people; "
                      f"classification accuracy (%) on the other {len(relearn['people']['measured'])} forget people "
                      "(never shown), on retain people as a control, and on the shown forget people as a positive "
                      "control (if they do not come back, the attack was too weak to tell erased from hidden "
                      "knowledge).", "",
                      "| Step | " + " | ".join(f"forget {m.upper()}" for m in ("vqa", "qa", "all"))
                      + " | retain (all) | shown forget (all) |",
                      "|---|---|---|---|---|---|"]
            for k, step in enumerate(relearn["steps"]):
                point = relearn["forget_accuracy"][k]
                control = relearn["retain_accuracy"][k]["all"] if relearn.get("retain_accuracy") else None
                shown = relearn["shown_accuracy"][k]["all"] if relearn.get("shown_accuracy") else None
                lines.append(f"| {step} | " + " | ".join(_fmt(point.get(m), "{:.1f}") for m in ("vqa", "qa", "all"))
                             + f" | {_fmt(control, '{:.1f}')} | {_fmt(shown, '{:.1f}')} |")
            vanilla = relearn["vanilla_forget_accuracy"]
            recovered = relearn["recovered_fraction"]
            lines += ["", f"Vanilla on the same questions: VQA {vanilla.get('vqa', 0):.1f}, QA {vanilla.get('qa', 0):.1f}. "
                      "Share of the forgotten accuracy that came back: " + ", ".join(
                          f"{m.upper()} {_fmt(recovered.get(m), '{:.2f}')}" for m in ("vqa", "qa", "all")) + "."]
    return lines
