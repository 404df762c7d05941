"""What every report shares: reading results.json, labels of splits, modalities and metrics,
stage notes, and the HTML building blocks (tables, matplotlib figures as inline PNGs, the style).
Run reports (markdown.py, html.py), the attack section (attacks.py), sequence and sweep reports
all build on these."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

SPLIT_LABELS = {"forget": "Forget", "test": "Test (paraphrased, transformed images)", "retain": "Retain",
                "real_world": "Real-world"}
MODALITY_LABELS = {"vqa": "VQA (image + text)", "qa": "QA (text only)"}
METRICS = (("mcq_accuracy", "Classification acc. (%)", "{:.1f}"), ("cloze_accuracy", "Fill-in-blank acc. (%)", "{:.1f}"),
           ("rougeL_f", "Generation ROUGE-L F", "{:.3f}"), ("bleu", "Generation BLEU", "{:.3f}"))
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
VANILLA_COLOR = "#444444"


def load_results(run: str | Path) -> dict[str, Any]:
    """results.json of a run folder (or the file itself), with a clear error if missing."""
    path = Path(run)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a run folder holding results.json)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    check_results_shape(results, path)
    return results


# The kind of each top-level entry a run writes (a sequence's too); any but ``config`` may be null
# (a run that stopped early, such as a failed knowledge check, has no figures after unlearning).
RESULTS_SHAPE: dict[str, tuple[type, ...]] = {
    "config": (dict,), **{key: (kind, type(None)) for key, kind in (
        ("protocol", str), ("knowledge_check", dict), ("vanilla", dict), ("unlearned", dict), ("gold", dict),
        ("tradeoff", dict), ("generalisation", dict), ("robustness", dict), ("failures", list), ("edit", dict),
        ("cost", dict), ("complete", bool), ("sequence", dict), ("kind", str))}}


def check_results_shape(results: Any, path: str | Path) -> None:
    """A results.json whose entries are of the kinds a run writes (one edited by hand may not be):
    a ValueError naming the file and the first field that is not."""
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object (a run's results), got {type(results).__name__}")
    for key, kinds in RESULTS_SHAPE.items():
        if key in results and not isinstance(results[key], kinds):
            raise ValueError(f"{path}: field {key!r} is {type(results[key]).__name__}, a run writes "
                             f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}: was it edited "
                             "by hand? Restore it or run the run again")
    for key in ("vanilla", "unlearned", "gold"):
        if isinstance(results.get(key), dict) and not isinstance(results[key].get("figures") or {}, dict):
            raise ValueError(f"{path}: field '{key}.figures' is {type(results[key]['figures']).__name__}, a run "
                             "writes an object: was it edited by hand? Restore it or run the run again")

def run_label(results: dict[str, Any]) -> str:
    config = results["config"]
    return config["name"] if config["name"] == config["method"] else f"{config['name']} ({config['method']})"

def stage_note(outcome: dict[str, Any]) -> str | None:
    """One line for a robustness stage that has no figures: switched off or not applicable,
    failed (with its error), or pending (the run stopped before it); None when it has figures."""
    if "failed" in outcome:
        failure = outcome["failed"]
        return (f"Failed: {failure.get('error')}: {failure.get('message')} (the rest of the run is complete; "
                "the traceback is in results.json)")
    if "pending" in outcome:
        return f"Not finished: {outcome['pending']}"
    if "skipped" in outcome:
        return f"Not run: {outcome['skipped']}."
    return None

# --- plots ----------------------------------------------------------------------------------
def new_figure(width: float, height: float, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])

def png_data(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")

# --- tables ---------------------------------------------------------------------------------
def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f3f7} td:first-child,th:first-child{text-align:left} tbody tr:nth-child(even){background:#fafafa}
figure{margin:12px 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:0.85em;color:#555}
.note{color:#555;font-size:0.9em} .skipped{color:#a33}
"""


def figure_html(png: str | None, caption: str, name: str) -> str:
    if png is None:
        return ""
    return (f'<figure id="plot-{name}"><img class="plot" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')
