"""Sequential deletion requests (``mllm-unlearn sequence``): the forget people in K requests, each
unlearned on the model the earlier requests left, each verified, with undo.

Request k (0-based in code, 1-based in reports) runs the method on request k's forget training
items with the run's usual retain data, on the model with earlier parts applied, and its edit
becomes part k of one ``SequentialEdit`` (``interventions/sequential.py``). What "earlier parts
applied" means (``SequenceConfig.context``):

- ``auto`` (default): a method whose edits change weights (GA, GradDiff, NPO, KL, RMU,
  MMUnlearner, MIP-Editor) trains request k on the sequential model, all earlier parts applied,
  so applying the parts in order is that model and each new weight edit's values are relative to
  it. A method whose edits only act on activations (MANU's neuron masks, MLLMEraser's steering)
  computes request k's part on the unedited model: its statistics and gate come from the model's
  own activations for request k's people against the retain data, never from states an earlier
  part already steered or masked. Each such part depends on nothing but its own request, so
  removing one is exact. Earlier people stay forgotten through their own parts, which stay
  applied; the retain data (what a gate must stay shut on) never holds a forget person, requested
  or not; and whether a new part disturbs earlier ones is measured after every request (the
  "earlier requests" figures).
- ``all``: every method computes request k on the sequential model (earlier masks and steering
  applied while a mask or gate is computed). Undo is then approximate for every method.

After each request the model (all parts so far) is scored on evaluation subsets: this request's
people, all earlier requests' people, forget people not yet requested (collateral), retain people
and real-world people (``SequenceConfig``: every question of the forget people, a fixed seeded
sample of ``retain_items`` / ``real_world_items`` questions per modality and task of the others).
``results.json`` (``sequence.requests[k]``), the reports and the edit so far are rewritten after
every request, so a failing late request never loses earlier rows.
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..data import Benchmark, WorldConfig
from ..data.clear import is_clear_layout
from ..data.items import Item
from ..eval import EvalConfig, Evaluator
from ..eval.attacks import AttackConfig, parse_attacks, run_battery
from ..eval.stages import stage_failure
from ..interventions import CompositeEdit, Edit, SequentialEdit, load_edit
from ..interventions.sequential import changes_weights, leaves
from ..methods import get_method
from ..methods.base import Method, MethodConfig
from ..models import VLM
from ..report import load_results
from ..training.loop import LoraOptions
from ..utils import peak_memory_mb, process_rank_and_count, seed_everything
from .attack import attack_config
from .config import BUILTIN_CLEAR, RunConfig
from .prepare import prepare_reported_benchmark, prepare_vanilla, vanilla_source
from .presets import model_built_here, resolve_method_config
from .record import run_record
from .results import write_certificate, write_results
from .run_folder import EDIT_DIR, RunFolder, check_edit_matches, edit_digest, open_run_folder, run_folder_lock
from .vanilla_figures import cached_value, settings, vanilla_cache

CONTEXTS = ("auto", "all")
# Evaluation groups after each request, in report order.
GROUPS = ("current", "earlier", "pending", "retain", "real_world")
GROUP_LABELS = {"current": "this request", "earlier": "earlier requests", "forgotten": "forgotten so far",
                "pending": "not yet requested", "retain": "retain", "real_world": "real-world", "undone": "undone request"}


class RequestFileError(ValueError):
    """A malformed requests file: the message names the file, line (or entry) and person ID."""


@dataclass
class SequenceConfig:
    requests: list[list[str]] | None = None  # person-ID groups in order; None: one request per forget person
    requests_source: str | None = None  # where they came from (a file), recorded
    context: str = "auto"  # what request k is computed on (module docstring)
    tasks: tuple[str, ...] = ("mcq",)  # evaluation tasks after each request
    retain_items: int = 60  # retain questions per modality and task in the evaluation subset (0: all)
    real_world_items: int = 60  # real-world questions per modality and task (0: all)
    # Parts to take as the first requests' edits instead of computing them again (``replay``: an
    # earlier run's parts before the removed request, which the same inputs would recompute bit for bit).
    reuse_parts: list[Edit] | None = None
    # People of a removed request (``replay``): scored as their own group ("undone"), not as pending.
    undone: tuple[str, ...] = ()
    # The attack battery on the model after the last request (``--attacks``; None: not run).
    attacks: AttackConfig | None = None

    def __post_init__(self) -> None:
        for name in ("retain_items", "real_world_items"):
            if getattr(self, name) < 0:
                raise ValueError(f"SequenceConfig.{name} must be >= 0 (0: all), got {getattr(self, name)}")


# --- requests ------------------------------------------------------------------------------
def read_requests(path: str | Path, benchmark: Benchmark) -> list[list[str]]:
    """Person-ID groups from ``path``: a JSON list of lists, or one request per line (IDs
    separated by commas or spaces; blank lines and ``#`` comments skipped). Every ID must be a
    forget person of ``benchmark``, and appear once: ``RequestFileError`` names the file, line
    (or JSON entry) and ID otherwise."""
    path = Path(path)
    if not path.is_file():
        raise RequestFileError(f"requests file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of an ID
    except UnicodeDecodeError as error:
        raise RequestFileError(f"requests file {path} is not UTF-8 text (byte {error.start}): expected person IDs, "
                               "one request per line, or a JSON list of lists") from None
    if "\0" in text:
        raise RequestFileError(f"requests file {path} is a binary file (it holds NUL bytes): expected person IDs, "
                               "one request per line, or a JSON list of lists")
    entries: list[tuple[str, list[str]]] = []  # (where, ids)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RequestFileError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(data, list):
            raise RequestFileError(f"{path}: expected a JSON list of lists of person IDs")
        for k, group in enumerate(data):
            if not isinstance(group, list) or not all(isinstance(x, (str, int)) for x in group):
                raise RequestFileError(f"{path}: entry {k + 1} must be a list of person IDs (strings), got {group!r}")
            entries.append((f"entry {k + 1}", [str(x) for x in group]))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append((f"line {number}", [x for x in line.replace(",", " ").split() if x]))
    return validate_requests(entries, benchmark, str(path))


def validate_requests(entries: Sequence[tuple[str, list[str]]], benchmark: Benchmark, source: str) -> list[list[str]]:
    """The groups of ``entries`` ((where, ids) pairs) after checking every ID is a forget person named once."""
    if not entries:
        raise RequestFileError(f"{source}: no requests (expected one line of person IDs per request)")
    forget = set(benchmark.forget_ids)
    known = {i.person_id for items in benchmark.eval_splits.values() for i in items}
    seen: dict[str, str] = {}
    groups = []
    for where, ids in entries:
        if not ids:
            raise RequestFileError(f"{source}, {where}: an empty request")
        for person in ids:
            if person not in known:
                raise RequestFileError(f"{source}, {where}: unknown person ID {person!r} (not in {benchmark.name})")
            if person not in forget:
                raise RequestFileError(f"{source}, {where}: person {person!r} is not in the forget split "
                                       f"(forget people: {', '.join(benchmark.forget_ids)})")
            if person in seen:
                raise RequestFileError(f"{source}, {where}: person {person!r} is requested twice "
                                       f"(also {seen[person]})")
            seen[person] = where
        groups.append(list(ids))
    return groups


def default_requests(benchmark: Benchmark) -> list[list[str]]:
    """One request per forget person, in the forget split's order."""
    return [[person] for person in benchmark.forget_ids]


# --- evaluation ----------------------------------------------------------------------------
def evaluation_subsets(benchmark: Benchmark, cfg: SequenceConfig, seed: int) -> dict[str, list[Item]]:
    """The evaluation items: every question of the forget people (split by request at each step)
    and fixed seeded samples of the retain and real-world questions, per modality and task."""
    out: dict[str, list[Item]] = {"forget": [i for i in benchmark.eval_splits["forget"] if i.task in cfg.tasks]}
    for split, cap in (("retain", cfg.retain_items), ("real_world", cfg.real_world_items)):
        chosen: list[Item] = []
        for modality in ("vqa", "qa"):
            for task in cfg.tasks:
                group = [i for i in benchmark.eval_splits.get(split, []) if i.modality == modality and i.task == task]
                if cap and len(group) > cap:
                    group = random.Random(f"{seed}:sequence:{split}:{modality}:{task}").sample(group, cap)
                chosen += group
        out[split] = chosen
    return out


def grouped_view(benchmark: Benchmark, subsets: dict[str, list[Item]], groups: dict[str, set[str]]) -> Benchmark:
    """``benchmark`` whose evaluation splits are the forget subset split by ``groups`` (name ->
    people) plus the retain and real-world subsets."""
    splits = {name: [i for i in subsets["forget"] if i.person_id in people] for name, people in groups.items()}
    splits.update(retain=subsets["retain"], real_world=subsets["real_world"])
    return replace(benchmark, eval_splits=splits)


def with_forgotten(figures: dict[str, Any]) -> dict[str, Any]:
    """``figures`` plus ``forgotten`` (this request's and earlier requests' people together:
    the count-weighted mean of the two groups' accuracies)."""
    out = dict(figures)
    merged: dict[str, dict[str, float]] = {}
    for modality in ("vqa", "qa"):
        cell: dict[str, float] = {}
        for metric in ("mcq_accuracy", "cloze_accuracy", "rougeL_f", "bleu"):
            count_key = {"rougeL_f": "generation_count", "bleu": "generation_count"}.get(metric, metric.replace(
                "_accuracy", "_count"))
            pairs = [(figures[g][modality][metric], figures[g][modality][count_key]) for g in ("current", "earlier")
                     if metric in figures.get(g, {}).get(modality, {})]
            total = sum(n for _, n in pairs)
            if total:
                cell[metric] = sum(v * n for v, n in pairs) / total
                cell[count_key] = total
        if cell:
            merged[modality] = cell
    if merged:
        out["forgotten"] = merged
    return out


def evaluate_groups(evaluator: Evaluator, benchmark: Benchmark, subsets: dict[str, list[Item]],
                    groups: dict[str, set[str]], edit: Edit | None) -> dict[str, Any]:
    """Figures of the model (``edit`` applied) on each forget-people group and the retain and real-world subsets."""
    view = grouped_view(benchmark, subsets, groups)
    evaluator.cfg = replace(evaluator.cfg, splits=tuple([*groups, "retain", "real_world"]))
    return with_forgotten(evaluator.evaluate(view, edit)["figures"])


# --- running -------------------------------------------------------------------------------
def context_parts(parts: Sequence[Edit], context: str) -> list[int]:
    """Positions of the earlier parts applied while the next request is computed (module docstring)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    if context == "all" or any(changes_weights(p) for p in parts):
        return list(range(len(parts)))
    return []


def edit_record(edit: Edit) -> dict[str, Any]:
    kinds = [leaf.kind for leaf in leaves(edit)]
    return {"kind": edit.kind, "leaf_kinds": kinds, "changes_weights": changes_weights(edit),
            "changed_parameters": getattr(edit, "changed_parameters", 0), "steps": edit.meta.get("steps")}


def unlearn_request(vlm: VLM, method: Method, method_cfg: MethodConfig, forget: Sequence[Item], retain: Sequence[Item],
                    parts: Sequence[Edit], applied: Sequence[int], seed: int) -> Edit:
    """Request's edit, computed with the earlier parts at ``applied`` on the model (removed after)."""
    context = CompositeEdit([parts[k] for k in applied]) if applied else None
    handle = context.apply(vlm) if context is not None else None
    try:
        seed_everything(seed)  # the same randomness whatever ran before: a part depends only on its inputs
        return method.unlearn(vlm, list(forget), list(retain), method_cfg)
    finally:
        if handle is not None:
            handle.remove()


def run_sequence(cfg: RunConfig, seq: SequenceConfig) -> dict[str, Any]:
    """Run the requests in order; writes ``runs/<name>/`` (results.json, report.md/.html, edit/) after each."""
    if seq.context not in CONTEXTS:
        raise ValueError(f"--context must be one of {', '.join(CONTEXTS)}, got {seq.context!r}")
    if process_rank_and_count()[1] > 1:
        raise ValueError("mllm-unlearn sequence runs in one process (not under accelerate launch / torchrun)")
    if cfg.benchmark == BUILTIN_CLEAR or (cfg.benchmark and is_clear_layout(cfg.benchmark)):
        raise ValueError("mllm-unlearn sequence evaluates MLLMU-Bench's splits; a CLEAR benchmark is not supported")
    if not seq.tasks or set(seq.tasks) - {"mcq", "cloze", "generation"}:
        raise ValueError(f"sequence tasks must be among mcq, cloze, generation, got {seq.tasks!r}")
    method_config, preset = resolve_method_config(cfg)
    method = get_method(cfg.method)
    method.check_options(method_config)
    if method_config.gradient_checkpointing is None:
        method_config = replace(method_config, gradient_checkpointing=not model_built_here(cfg))
    with open_run_folder(cfg.runs_dir, cfg.name) as folder:  # locked; a bad name or runs dir fails here
        return run_requests(cfg, seq, folder, method, method_config, preset)


def run_requests(cfg: RunConfig, seq: SequenceConfig, folder: RunFolder, method: Method, method_config: MethodConfig,
                 preset: str) -> dict[str, Any]:
    """``run_sequence``'s work, written into ``folder.work`` and committed at the end."""
    run_dir = folder.work
    timings: dict[str, float] = {}

    start = time.perf_counter()
    benchmark, benchmark_key = prepare_reported_benchmark(cfg)
    requests = seq.requests if seq.requests is not None else default_requests(benchmark)
    if seq.requests is not None:  # given through the Python API: the same checks as a file's
        requests = validate_requests([(f"request {k + 1}", list(g)) for k, g in enumerate(requests)], benchmark,
                                     seq.requests_source or "requests")
    timings["benchmark"] = time.perf_counter() - start
    start = time.perf_counter()
    vlm, model_path, trained = prepare_vanilla(cfg, benchmark, benchmark_key)
    timings["knowledge injection" if trained else "load vanilla model"] = time.perf_counter() - start

    subsets = evaluation_subsets(benchmark, seq, cfg.seed)
    evaluator = Evaluator(vlm, replace(cfg.eval, tasks=seq.tasks, max_items_per_group=None))
    requested_ids = [p for group in requests for p in group]
    start = time.perf_counter()
    unedited = {"current": set(), "earlier": set(), "pending": set(benchmark.forget_ids)}
    view = grouped_view(benchmark, subsets, unedited)
    cache = vanilla_cache(cfg, model_path, vlm)  # the same vanilla figures as an earlier sequence's
    vanilla = cached_value(cache, "sequence", [i for items in view.eval_splits.values() for i in items],
                           settings(evaluator.cfg, groups={k: sorted(v) for k, v in unedited.items()}),
                           lambda: evaluate_groups(evaluator, benchmark, subsets, unedited, None))
    timings["evaluate vanilla"] = time.perf_counter() - start
    retain = benchmark.retain_train + (benchmark.prior_knowledge() if method.uses_prior_knowledge else [])
    config = run_record(cfg, vlm, benchmark, model_path=model_path, method_name=cfg.method, preset=preset,
                        method_config=method_config.to_dict(), vanilla_source=vanilla_source(model_path, trained, cfg))
    config.update({
        "context": seq.context, "requests_file": seq.requests_source,
        # what `sequence --undo` needs to rebuild the benchmark and model
        "run_config": {"benchmark": cfg.benchmark, "cache_dir": cfg.cache_dir, "world": asdict(cfg.world),
                       "family": cfg.family, "device": cfg.device, "dtype": cfg.dtype, "max_pixels": cfg.max_pixels,
                       "preset": cfg.preset}})
    subset_sizes = {split: {m: {t: sum(1 for i in items if i.modality == m and i.task == t) for t in seq.tasks}
                            for m in ("vqa", "qa")} for split, items in subsets.items()}
    results: dict[str, Any] = {
        "kind": "sequence", "config": config, "protocol": benchmark.protocol,
        "vanilla_eval_cache": cache.record("sequence"),
        "sequence": {"planned": requests, "tasks": list(seq.tasks), "subsets": subset_sizes,
                     "subset_rule": {"forget": "every question of the forget people",
                                     "retain": f"{seq.retain_items or 'all'} questions per modality and task (seeded)",
                                     "real_world": f"{seq.real_world_items or 'all'} questions per modality and task "
                                                   "(seeded)"},
                     "subset_caps": {"retain": seq.retain_items, "real_world": seq.real_world_items},
                     "unrequested": [p for p in benchmark.forget_ids if p not in requested_ids],
                     "vanilla": {"figures": vanilla}, "requests": [], "undo": []},
        "edit": None, "failures": [],
        "cost": {"wall_time_s": timings, "peak_memory_mb": peak_memory_mb(vlm.device)},
        "complete": False,  # until the last request (and the battery) is done
    }

    def write() -> None:
        results["cost"]["peak_memory_mb"] = peak_memory_mb(vlm.device)
        write_results(run_dir, results)

    write()
    parts: list[Edit] = []
    records: list[dict[str, Any]] = []
    for k, people in enumerate(requests):
        try:
            forget = [i for i in benchmark.forget_train if i.person_id in set(people)]
            if not forget:
                raise ValueError(f"request {k + 1} ({', '.join(people)}): the benchmark has no forget training items "
                                 "for these people")
            applied = context_parts(parts, seq.context)
            start = time.perf_counter()
            if seq.reuse_parts is not None and k < len(seq.reuse_parts):
                part = seq.reuse_parts[k]
            else:
                # The run's settings for every request, its seed too (a part does not depend on its
                # position); epochs count passes over the request's own forget items.
                part = unlearn_request(vlm, method, method_config, forget, retain, parts, applied, cfg.seed)
            unlearn_s = time.perf_counter() - start
            parts.append(part)
            records.append({"index": k, "people": list(people), "depends_on": list(applied),
                            "context": "sequential model" if applied else "unedited model"})
            edit = SequentialEdit(parts, {"method": cfg.method, "config": method_config.to_dict(),
                                          "requests": records, "context": seq.context})
            edit.save(run_dir / EDIT_DIR)
            start = time.perf_counter()
            earlier = {p for group in requests[:k] for p in group}
            groups = {"current": set(people), "earlier": earlier,
                      "pending": set(benchmark.forget_ids) - earlier - set(people) - set(seq.undone)}
            if seq.undone:
                groups["undone"] = set(seq.undone)
            figures = evaluate_groups(evaluator, benchmark, subsets, groups, edit)
            evaluate_s = time.perf_counter() - start
        except Exception as error:  # recorded with every earlier row, then raised
            failure = stage_failure(f"request {k + 1}", error)
            results["failures"].append(failure)
            results["sequence"]["failed"] = failure
            write()
            raise
        results["sequence"]["requests"].append({
            "index": k, "people": list(people), "figures": figures, "edit": {**edit_record(part), **records[-1]},
            "seconds": {"unlearn": unlearn_s, "evaluate": evaluate_s},
            **({"reused": True} if seq.reuse_parts is not None and k < len(seq.reuse_parts) else {})})
        results["edit"] = {"kind": edit.kind, "path": str(folder.final / EDIT_DIR), "parts": len(parts),
                           "exact_undo": [edit.exact_undo(j) for j in range(len(parts))],
                           "sha256": edit_digest(run_dir / EDIT_DIR)}
        timings[f"request {k + 1}"] = unlearn_s + evaluate_s
        write()
        if cfg.progress:
            print(f"request {k + 1}/{len(requests)} ({', '.join(people)}): unlearned in {unlearn_s:.1f} s, "
                  f"evaluated in {evaluate_s:.1f} s", file=sys.stderr)
    if seq.attacks is not None and parse_attacks(seq.attacks.attacks):
        attack_final_model(cfg, seq.attacks, vlm, requested_view(benchmark, requested_ids), edit, results, run_dir, write)
    folder.commit(results)
    return results


def requested_view(benchmark: Benchmark, requested: Sequence[str]) -> Benchmark:
    """``benchmark`` whose forget people are the requested ones only (what the battery probes)."""
    people = set(requested)
    if people == set(benchmark.forget_ids):
        return benchmark
    splits = {**benchmark.eval_splits,
              "forget": [i for i in benchmark.eval_splits.get("forget", []) if i.person_id in people]}
    return replace(benchmark, eval_splits=splits, forget_ids=[p for p in benchmark.forget_ids if p in people])


def attack_final_model(cfg: RunConfig, attacks: AttackConfig, vlm: VLM, benchmark: Benchmark, edit: Edit,
                       results: dict[str, Any], run_dir: Path, write: Any) -> None:
    """The attack battery (``sequence --attacks``) on the model after the last request, with the whole
    sequential edit applied, probing every requested person: ``results["robustness"]["attacks"]``
    (as a run's), ``certificate.json``, each attack's seconds in the cost table; results.json and
    the reports rewritten after each attack, a failed attack recorded and the next one run."""
    attack_cfg = attack_config(replace(cfg, attacks=attacks), model_built_here(cfg))
    results["config"]["attacks"] = asdict(attack_cfg)
    stages = results.setdefault("robustness", {})["attacks"] = {}

    def done(stage: str, outcome: dict[str, Any]) -> None:
        stages[stage] = outcome
        if "failed" in outcome:
            results["failures"].append(outcome["failed"])
        write()
        if stage == "certificate" and "skipped" not in outcome:
            write_certificate(run_dir, outcome)

    run_battery(vlm, benchmark, edit, attack_cfg, on_stage=done, timings=results["cost"]["wall_time_s"])


# --- undo ----------------------------------------------------------------------------------
def run_config_from(results: dict[str, Any], run_dir: Path) -> RunConfig:
    """The RunConfig that rebuilds a sequence run's benchmark and model (its recorded options)."""
    config = results["config"]
    recorded = config.get("run_config") or {}
    return RunConfig(name=config["name"], family=recorded.get("family", config["family"]), model=config["model_path"],
                     benchmark=recorded.get("benchmark"), forget_percent=config["forget_percent"], seed=config["seed"],
                     device=recorded.get("device", "auto"), dtype=recorded.get("dtype", "auto"),
                     max_pixels=recorded.get("max_pixels"), runs_dir=str(run_dir.parent),
                     cache_dir=recorded.get("cache_dir", ".cache/mllm_unlearn"),
                     world=WorldConfig(**recorded["world"]) if recorded.get("world") else WorldConfig(),
                     method=config["method"], preset=recorded.get("preset"), progress=False)


def undo_request(run_dir: str | Path, request: int, approximate: bool = False, out: str | Path | None = None,
                 evaluate: bool = True) -> dict[str, Any]:
    """``_undo_request`` holding the run folder's lock (no run rewrites it meanwhile)."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        return _undo_request(run_dir, request, approximate, out, evaluate)


def _undo_request(run_dir: Path, request: int, approximate: bool, out: str | Path | None,
                  evaluate: bool) -> dict[str, Any]:
    """Remove request ``request`` (1-based, as the report numbers them) from a sequence run's edit.

    Writes the edit without it to ``out`` (default ``RUN_DIR/edit-without-request-N``) and, with
    ``evaluate``, scores it on the run's evaluation subsets (the removed request's people as
    ``undone``); appends the record to ``sequence.undo`` in results.json and re-renders the reports.
    ``UndoNotExact`` when later parts were computed on top of it and ``approximate`` is False."""
    results = load_results(run_dir)
    if results.get("kind") != "sequence":
        raise ValueError(f"{run_dir} is not a sequence run (its results.json has no sequence requests)")
    check_edit_matches(run_dir, results, "sequence --undo")
    edit = load_edit(run_dir / "edit")
    if not isinstance(edit, SequentialEdit):
        raise ValueError(f"{run_dir / 'edit'} is a {edit.kind} edit, not a sequential one")
    if not 1 <= request <= len(edit.parts):
        raise ValueError(f"--undo {request}: the run holds requests 1 to {len(edit.parts)}")
    exact = edit.exact_undo(request - 1)
    if not exact and not approximate:
        edit.without(request - 1)  # raises UndoNotExact with the explanation
    cfg = run_config_from(results, run_dir)
    needs_model = evaluate or not exact
    vlm = benchmark = None
    if needs_model:
        benchmark, benchmark_key = prepare_reported_benchmark(cfg)
        vlm, _, _ = prepare_vanilla(cfg, benchmark, benchmark_key)
    undone = edit.without(request - 1, vlm=vlm, approximate=approximate)
    out = Path(out) if out is not None else run_dir / f"edit-without-request-{request}"
    undone.save(out)
    record: dict[str, Any] = {"request": request, "people": edit.requests[request - 1].get("people", []),
                              "exact": exact, "edit_path": str(out), **({"approximation": undone.meta["undone"][-1].get(
                                  "approximation")} if not exact else {})}
    if evaluate:
        seq = SequenceConfig(tasks=tuple(results["sequence"]["tasks"]))
        caps = results["sequence"].get("subset_caps", {})
        seq.retain_items = caps.get("retain", seq.retain_items)
        seq.real_world_items = caps.get("real_world", seq.real_world_items)
        subsets = evaluation_subsets(benchmark, seq, cfg.seed)
        removed = set(record["people"])
        kept = {p for r in undone.requests for p in r.get("people", [])}
        evaluator = Evaluator(vlm, EvalConfig(tasks=seq.tasks, progress=False, seed=cfg.seed))
        record["figures"] = evaluate_groups(evaluator, benchmark, subsets, {
            "current": set(), "earlier": kept, "undone": removed,
            "pending": set(benchmark.forget_ids) - kept - removed}, undone)
    results["sequence"].setdefault("undo", []).append(record)
    write_results(run_dir, results)
    return record


def replay_without(run_dir: str | Path, request: int, name: str | None = None) -> dict[str, Any]:
    """``_replay_without`` holding the run folder's lock (the replay's own folder is locked too)."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        return _replay_without(run_dir, request, name)


def _replay_without(run_dir: Path, request: int, name: str | None) -> dict[str, Any]:
    """The exact undo for any method: the sequence of ``run_dir`` run again without request
    ``request`` (1-based), into a new run folder (default ``<name>-without-request-N`` beside it).

    The parts of the requests before it are taken from the run (recomputing them from the same
    model, data, settings and seed gives the same edits); the later requests are unlearned again
    on the model without it, so the result is the model as if it had never been requested."""
    results = load_results(run_dir)
    if results.get("kind") != "sequence":
        raise ValueError(f"{run_dir} is not a sequence run (its results.json has no sequence requests)")
    check_edit_matches(run_dir, results, "sequence --replay")
    edit = load_edit(run_dir / "edit")
    done = results["sequence"]["requests"]
    if not isinstance(edit, SequentialEdit) or len(edit.parts) != len(done):
        raise ValueError(f"{run_dir / 'edit'} does not hold one part per finished request")
    if not 1 <= request <= len(done):
        raise ValueError(f"--undo {request}: the run holds requests 1 to {len(done)}")
    config = results["config"]
    method_values = dict(config["method_config"])
    if method_values.get("lora"):
        method_values["lora"] = LoraOptions(**method_values["lora"])
    cfg = replace(run_config_from(results, run_dir), name=name or f"{config['name']}-without-request-{request}",
                  method_cfg=MethodConfig(**method_values), method_overrides={},
                  eval=EvalConfig(tasks=tuple(results["sequence"]["tasks"]), seed=config["seed"], progress=False))
    requests = [row["people"] for row in done]
    caps = results["sequence"].get("subset_caps", {})
    seq = SequenceConfig(requests=requests[:request - 1] + requests[request:],
                         requests_source=f"{run_dir} without request {request}", context=config.get("context", "auto"),
                         tasks=tuple(results["sequence"]["tasks"]), retain_items=caps.get("retain", 60),
                         real_world_items=caps.get("real_world", 60), reuse_parts=edit.parts[:request - 1],
                         undone=tuple(requests[request - 1]))
    replayed = run_sequence(cfg, seq)
    record = {"request": request, "people": requests[request - 1], "exact": True, "replayed_into": str(
        Path(cfg.runs_dir) / cfg.name), "edit_path": str(Path(cfg.runs_dir) / cfg.name / "edit"),
        "recomputed_requests": len(requests) - request}
    last = replayed["sequence"]["requests"][-1]["figures"] if replayed["sequence"]["requests"] else {}
    # As an in-place undo records them: every kept request's people together as "earlier".
    record["figures"] = {group: last[group] for group in ("undone", "pending", "retain", "real_world") if group in last}
    if "forgotten" in last:
        record["figures"]["earlier"] = last["forgotten"]
    results["sequence"].setdefault("undo", []).append(record)
    write_results(run_dir, results)
    return record
