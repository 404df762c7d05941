"""Robustness stages after unlearning (membership inference, the relearning attack) and the
attack battery with its certificate, each recorded as it finishes; ``mllm-unlearn attack``
runs the battery again on a finished run."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..data import Benchmark, load_mllmu
from ..data.validation import exclude_validation_people
from ..eval.attacks import BASELINE, AttackConfig, parse_attacks, run_battery
from ..eval.cache import EvalCache
from ..eval.mia import membership_inference, mia_items
from ..eval.relearn import RelearnNotApplicable, relearn_attack
from ..eval.stages import STAGE_PENDING, run_stage
from ..models import VLM, load_vlm
from ..report import load_results
from ..utils import peak_memory_mb
from .config import RunConfig
from .prepare import given_edit_kind, load_given_edit
from .results import write_certificate, write_results
from .run_folder import check_edit_matches, run_folder_lock
from .vanilla_figures import cached_value


def attack_config(cfg: RunConfig, built_here: bool) -> AttackConfig | None:
    """The run's battery settings with its seed, progress and who built the model (benign
    relearning's LoRA "auto" resolves as the relearning attack's)."""
    if cfg.attacks is None:
        return None
    return replace(cfg.attacks, seed=cfg.seed, progress=cfg.progress, model_built_here=built_here)


def run_attacks(cfg: AttackConfig | None, vlm: VLM, benchmark: Benchmark, edit: Any, results: dict[str, Any],
                run_dir: Path, previous: dict[str, Any] | None = None) -> None:
    """The attack battery as robustness stages (``results["robustness"]["attacks"]``): results.json
    and the reports rewritten after each attack, ``certificate.json`` after the certificate; each
    attack's seconds in ``results["cost"]["wall_time_s"]`` ("attack: <name>"). ``previous``: an
    earlier battery's outcomes on the same edit, kept for the attacks not run now (run_battery)."""
    names = parse_attacks(cfg.attacks) if cfg is not None else ()
    if not names:
        results["robustness"]["attacks"] = {"skipped": "switched off (--attacks none)"}
        write_results(run_dir, results)
        return
    kept = {k: v for k, v in (previous or {}).items() if k not in names and isinstance(v, dict) and "records" in v}
    stages = results["robustness"]["attacks"] = {**kept, **{name: {"pending": STAGE_PENDING} for name in names}}
    stages["certificate"] = {"pending": STAGE_PENDING}
    write_results(run_dir, results, reports=False)
    timings = results["cost"].setdefault("wall_time_s", {})

    def attack_done(stage: str, outcome: dict[str, Any]) -> None:
        stages[stage] = outcome
        if "failed" in outcome:
            results["failures"].append(outcome["failed"])
        results["cost"]["peak_memory_mb"] = peak_memory_mb(vlm.device)
        if stage != "certificate":
            # results.json after each attack; the reports (their plots take seconds) once, at the end
            # (`mllm-unlearn report RUN_DIR` renders them from a results.json a crash left behind).
            write_results(run_dir, results, reports=False)
            return
        write_results(run_dir, results)
        if "skipped" not in outcome:
            write_certificate(run_dir, outcome)

    run_battery(vlm, benchmark, edit, cfg, on_stage=attack_done, timings=timings, previous=kept)


def attack_existing_run(run_dir: str | Path, cfg: AttackConfig, edit_path: str | Path | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """``mllm-unlearn attack RUN_DIR``: the battery on a finished run's model and edit (or
    ``edit_path``: a saved edit or an unlearned checkpoint of the run's model), its results.json,
    reports and certificate.json updated in place, holding the folder's lock. Returns the updated
    results. A folder whose edit is not the one its results.json measured is refused."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        return _attack_existing_run(run_dir, cfg, edit_path, device)


def _attack_existing_run(run_dir: Path, cfg: AttackConfig, edit_path: str | Path | None, device: str) -> dict[str, Any]:
    results = load_results(run_dir)
    check_edit_matches(run_dir, results, "attack")
    config = results["config"]
    if results.get("protocol") == "clear":
        raise ValueError(f"{run_dir} is a CLEAR run: the attack battery probes MLLMU-Bench's classification questions, "
                         "which CLEAR has none of")
    root = (config.get("benchmark") or {}).get("root")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(f"{run_dir / 'results.json'}: the run's benchmark folder {root!r} is not there")
    benchmark = load_mllmu(root, config["forget_percent"], seed=config["seed"])
    if config.get("preset_file"):
        benchmark = exclude_validation_people(benchmark, config["preset_file"])
    model_path = config.get("model_path")
    if not model_path or not Path(model_path).is_dir():
        raise FileNotFoundError(f"{run_dir / 'results.json'}: the run's model {model_path!r} is not there")
    edit_source = Path(edit_path) if edit_path is not None else run_dir / "edit"
    given_edit_kind(edit_source)  # a clear error before the model loads
    vlm = load_vlm(model_path, device, config.get("dtype_option") or "auto", config.get("max_pixels"))
    edit = load_given_edit(edit_source, vlm)
    edit.apply(vlm).remove()  # an edit of another model fails here
    cfg = replace(cfg, seed=config["seed"], model_built_here=bool(config.get("model_built_here", True)))
    earlier = results.get("robustness", {}).get("attacks")
    # An earlier battery's other attacks are kept when this one attacks the same edit with the same
    # settings (their records then join the certificate); otherwise the battery starts afresh.
    same = (isinstance(earlier, dict) and edit_path is None and not config.get("attacks_edit")
            and {k: v for k, v in (config.get("attacks") or {}).items() if k not in ("attacks", "progress")}
            == {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=str)).items()
                if k not in ("attacks", "progress")})
    previous = earlier if same else None
    results["config"]["attacks"] = asdict(cfg)
    results["config"]["attacks_edit"] = str(edit_source) if edit_path is not None else None
    results.setdefault("failures", [])
    results.setdefault("cost", {}).setdefault("wall_time_s", {})
    rerun = set(parse_attacks(cfg.attacks)) | {BASELINE}
    for key in [k for k in results["cost"]["wall_time_s"] if k.startswith("attack: ")]:
        if previous is None or key.removeprefix("attack: ") in rerun:
            del results["cost"]["wall_time_s"][key]  # this battery's seconds replace an earlier one's
    results["failures"] = [f for f in results["failures"] if not str(f.get("stage", "")).endswith(" attack")
                           or f.get("stage") == "relearning attack"]
    run_attacks(cfg, vlm, benchmark, edit, results, run_dir, previous)
    return results


ROBUSTNESS_STAGES = {"mia": "membership inference", "relearn": "relearning attack"}


def run_robustness(cfg: RunConfig, vlm: VLM, benchmark: Benchmark, edit: Any, timings: dict[str, float],
                   on_stage: Any = None, cache: EvalCache | None = None) -> dict[str, Any]:
    """Membership inference (vanilla and unlearned) and the relearning attack, each skipped with
    the reason recorded when switched off or when the benchmark cannot support it.

    A stage that raises (out of memory included) is recorded as ``{"failed": {stage, error,
    message, traceback}}`` and the next stage still runs; ``on_stage(key, outcome)`` is called
    after each stage (the pipeline rewrites results.json there). ``cfg.relearn`` must be resolved
    (``resolve_relearn``); the attack leaves ``vlm`` as it found it, also when it fails. ``cache``:
    the vanilla model's evaluation cache, from which its membership-inference figures are read."""
    out: dict[str, Any] = {}

    def finish(key: str, outcome: dict[str, Any]) -> None:
        out[key] = outcome
        if on_stage is not None:
            on_stage(key, outcome)

    members, non_members = mia_items(benchmark)
    if cfg.mia is None:
        finish("mia", {"skipped": "switched off (--no-mia)"})
    elif not members or not non_members:
        finish("mia", {"skipped": f"{benchmark.name} has no held-out (non-member) people: add a Holdout_Set config "
                                  "of people the vanilla model never saw" if not non_members else
                                  f"{benchmark.name} has no forget training items"})
    else:
        start = time.perf_counter()
        outcome = run_stage(ROBUSTNESS_STAGES["mia"], lambda: {
            "vanilla": cached_value(cache, "mia", members + non_members, {**asdict(cfg.mia), "seed": cfg.seed},
                                    lambda: membership_inference(vlm, members, non_members, cfg.mia, seed=cfg.seed)),
            "unlearned": membership_inference(vlm, members, non_members, cfg.mia, edit=edit, seed=cfg.seed)})
        timings["membership inference"] = time.perf_counter() - start
        finish("mia", outcome)
    if cfg.relearn is None:
        finish("relearn", {"skipped": "switched off (--no-relearn)"})
    else:
        start = time.perf_counter()
        # RelearnNotApplicable: a benchmark too small or without classification questions.
        outcome = run_stage(ROBUSTNESS_STAGES["relearn"], lambda: relearn_attack(vlm, benchmark, edit, replace(cfg.relearn, seed=cfg.seed)),
                            not_applicable=(RelearnNotApplicable,))
        timings["relearning attack"] = time.perf_counter() - start
        finish("relearn", outcome)
    return out
