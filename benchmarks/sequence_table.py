"""Sequential deletion requests on the built-in benchmark: a section of docs/results.md.

    .venv/bin/python benchmarks/sequence_table.py [--methods ga,graddiff,manu,mip-editor,mllmeraser]
                                                  [--out docs/results.md] [--from-runs]

Per method, `mllm-unlearn sequence --method M --name sequence-M`: the 10 people of forget_10 as 10
single-person requests in the split's order, on the cached default vanilla tiny LLaVA (the model
`make run` starts from: shipped with the package, or trained and cached), each method with its tiny preset applied per request (the same
epochs over the request's own forget items: one person is 1/10 of the forget set, so a request
takes about 1/10 of the one-shot run's steps, batches rounding up). The section holds classification accuracy after
requests 1, 5 and 10 on this request's
people, all earlier requests' people, retain and real-world people (VQA and QA), where retain
accuracy first falls below 90% of vanilla, and the wall time per request. Each run's folder
(runs/sequence-M: results.json, report.md, report.html with the curves) stays; `mllm-unlearn compare
runs/sequence-*` overlays the curves. The section is written between markers, so the rest of
the file (benchmarks/methods_table.py's table) is kept.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mllm_unlearn.report.sequence import first_retain_drop

START = "<!-- sequence-table:start -->"
END = "<!-- sequence-table:end -->"
DEFAULT_METHODS = "ga,graddiff,manu,mip-editor,mllmeraser"
SHOWN_AFTER = (1, 5, 10)


def _cell(figures: dict, group: str) -> str:
    values = []
    for modality in ("vqa", "qa"):
        value = figures.get(group, {}).get(modality, {}).get("mcq_accuracy")
        values.append("–" if value is None else f"{value:.1f}")
    return " / ".join(values)


def stay_forgotten(requests: list[dict]) -> str:
    """VQA / QA of the people of every request but the last: the mean of their accuracy right after
    their own request (a request's people weighted by their questions) → the last row's "earlier requests"."""
    if len(requests) < 2:
        return "–"
    cells = []
    for modality in ("vqa", "qa"):
        own = [r["figures"]["current"][modality] for r in requests[:-1] if modality in r["figures"].get("current", {})]
        total = sum(c["mcq_count"] for c in own)
        later = requests[-1]["figures"].get("earlier", {}).get(modality, {}).get("mcq_accuracy")
        if not total or later is None:
            cells.append("–")
            continue
        cells.append(f"{sum(c['mcq_accuracy'] * c['mcq_count'] for c in own) / total:.1f} → {later:.1f}")
    return " / ".join(cells)


def _step_counts(runs: list[tuple[str, dict]]) -> str:
    """The optimizer steps of the first training method's requests, from its run (e.g. ": ga 3 steps a
    request, 30 in all"), so the section's text follows the presets instead of restating them."""
    for method, results in runs:
        steps = [(request.get("edit") or {}).get("steps") for request in results["sequence"]["requests"]]
        if steps and all(isinstance(step, int) for step in steps):
            each = f"{steps[0]}" if len(set(steps)) == 1 else f"{min(steps)}-{max(steps)}"
            return f": {method} {each} steps a request, {sum(steps)} in all"
    return ""


def section(runs: list[tuple[str, dict]], command: str) -> list[str]:
    lines = [START, "", "## Sequential deletion requests (forget_10, one person per request)", "",
             "Each method unlearns the 10 forget people one request at a time, in the forget split's order, each "
             "request on the model the earlier ones left (weight-changing methods train on the sequential model; "
             "MANU's masks and MLLMEraser's steering are computed on the unedited model, so each part can be "
             "undone exactly; [sequence.md](sequence.md#what-is-composed)). Tiny preset per request: the same epochs "
             "over the request's own forget items (one person, 40 training items: about 1/10 of the one-shot run's "
             f"steps per request, batches rounding up{_step_counts(runs)}). Classification accuracy (%, likelihood scorer) VQA / QA after "
             "requests 1, 5 and 10, on the vanilla tiny LLaVA `make run` caches. Evaluation subsets: every "
             "classification question of the forget people (5 per person and modality), 60 retain and 60 "
             "real-world questions per modality (seeded, the same after every request). Produced by "
             f"`{command}` on the shared 2-core CPU (wall times depend on what else ran).", "",
             "| method | after request | this request | earlier requests | not yet requested | retain | real-world |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    if runs:
        vanilla = runs[0][1]["sequence"]["vanilla"]["figures"]
        lines.append(f"| vanilla | – | {_cell(vanilla, 'pending')} (all forget people) | – | "
                     f"{_cell(vanilla, 'pending')} | {_cell(vanilla, 'retain')} | {_cell(vanilla, 'real_world')} |")
    for method, results in runs:
        rows = {row["index"] + 1: row for row in results["sequence"]["requests"]}
        for k in SHOWN_AFTER:
            if k not in rows:
                lines.append(f"| {method} | {k} | not reached | | | | |")
                continue
            figures = rows[k]["figures"]
            lines.append(f"| {method} | {k} | {_cell(figures, 'current')} | {_cell(figures, 'earlier')} | "
                         f"{_cell(figures, 'pending')} | {_cell(figures, 'retain')} | {_cell(figures, 'real_world')} |")
    lines += ["", "| method | requests done | earlier people: right after their own request → after the last | "
              "retain VQA first < 90% of vanilla | retain QA first < 90% of vanilla | "
              "edit kind | exact undo | wall time per request (s, unlearn + evaluate) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, results in runs:
        requests = results["sequence"]["requests"]
        drops = [first_retain_drop(results, m, "mcq_accuracy") for m in ("vqa", "qa")]
        seconds = [r["seconds"]["unlearn"] + r["seconds"]["evaluate"] for r in requests]
        kinds = sorted({" + ".join(r["edit"]["leaf_kinds"]) for r in requests})
        exact = (results.get("edit") or {}).get("exact_undo") or []
        undo = ("every request" if exact and all(exact) else
                f"last request only ({sum(exact)} of {len(exact)})" if exact else "–")
        failed = results["sequence"].get("failed")
        done = f"{len(requests)}" + (f" ({failed['stage']} failed: {failed['error']})" if failed else "")
        time_cell = (f"{sum(seconds) / len(seconds):.1f} (min {min(seconds):.1f}, max {max(seconds):.1f})"
                     if seconds else "–")
        lines.append(f"| {method} | {done} | {stay_forgotten(requests)} | "
                     f"{'after request ' + str(drops[0]) if drops[0] else 'never'} | "
                     f"{'after request ' + str(drops[1]) if drops[1] else 'never'} | {', '.join(kinds)} | {undo} | "
                     f"{time_cell} |")
    undo_rows = []
    for method, results in runs:
        for record in results["sequence"].get("undo", []):
            how = ("exact, later requests replayed" if record.get("replayed_into") else
                   "exact, part removed" if record["exact"] else "approximate (task arithmetic)")
            flag = " --replay" if record.get("replayed_into") else "" if record["exact"] else " --approximate"
            figures = record.get("figures", {})
            undo_rows.append(f"| {method} | {record['request']} ({', '.join(record['people'])}) | {how} | "
                             f"{_cell(figures, 'undone')} | {_cell(figures, 'earlier')} | {_cell(figures, 'retain')} | "
                             f"{_cell(figures, 'real_world')} | `mllm-unlearn sequence runs/sequence-{method} --undo "
                             f"{record['request']}{flag}` |")
    if undo_rows:
        lines += ["", "Undo after the 10 requests (classification VQA / QA; the undone person is still hit by the "
                  "other requests' collateral damage, as the not-yet-requested people are):", "",
                  "| method | request removed | how | undone person | kept requests | retain | real-world | command |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |", *undo_rows]
    lines += ["", "This request: the people just unlearned; earlier requests: everyone unlearned before (do they "
              "stay forgotten?); not yet requested: forget people still to come (collateral damage). Exact undo: "
              "`mllm-unlearn sequence RUN_DIR --undo N` gives exactly the model without request N (later parts never "
              "saw it); a weight edit trained on top of request N is undone exactly by running the later requests again "
              "(`--undo N --replay`) or approximately in place (`--approximate`). The one-shot figures of the same "
              "presets (all 10 people in one request) are in the table above. Wall time: MLLMEraser recomputes its "
              "retain-prompt statistics (5,000 retain and real-world items in 6 prompt forms, 4,096 lifted features) "
              "for every request, which is nearly all of its time.",
              "", END]
    return lines


def write_section(out: Path, lines: list[str]) -> None:
    text = out.read_text() if out.is_file() else ""
    block = "\n".join(lines)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--from-runs", action="store_true",
                        help="rebuild the section from the runs/sequence-* folders already there, without running")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = []
    for method in methods:
        name = f"sequence-{method}"
        results_file = Path(args.runs_dir) / name / "results.json"
        if not args.from_runs:
            command = [sys.executable, "-m", "mllm_unlearn", "sequence", "--method", method, "--name", name,
                       "--runs-dir", args.runs_dir, "--cache-dir", args.cache_dir, "--quiet"]
            print(" ".join(command[1:]), file=sys.stderr, flush=True)
            # A failing request is recorded in results.json with every row before it: keep going.
            subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
        if not results_file.is_file():
            raise SystemExit(f"{results_file} is missing (run without --from-runs first)")
        runs.append((method, json.loads(results_file.read_text())))
    command = ".venv/bin/python benchmarks/sequence_table.py" + (
        f" --methods {args.methods}" if args.methods != DEFAULT_METHODS else "")
    lines = section(runs, command)
    write_section(Path(args.out), lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
