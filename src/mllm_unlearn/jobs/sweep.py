"""``mllm-unlearn sweep``: a budgeted multi-objective hyperparameter search of one method on the
validation split, whose chosen point becomes a preset file for ``mllm-unlearn run --preset``.

- **Where it measures.** On ``validation_benchmark``: the built-in world's validation people
  (``data/synthetic.py``: trained on, in no reported split), or, for a benchmark without them (a
  user's MLLMU-Bench download), a seeded carve-out of its retain and real-world people
  (``carve_out_validation``), which a run with the resulting preset then leaves out of its
  reported retain and real-world figures (``exclude_validation_people``).
- **What it optimises.** Two objectives, both maximised: chance-corrected forget efficacy and
  retention (``eval/tradeoff.py``), each the mean over the two modalities (VQA, QA); retention of
  a modality is the mean of its retain and real-world retention. Classification only
  (likelihood scorer, protocol ``ours``): the fast evaluation; generation is not measured.
- **The search.** Optuna's TPE sampler (multi-objective), seeded per trial from the sweep seed
  and the trial's number, so the same seed gives the same trials, also across resumes. The study
  lives in Optuna's SQLite storage (``--storage``, default ``OUT/study.db``): the same command
  again continues to ``--trials`` finished trials, and several processes may share one storage
  (each finishes the trial it started, so the total can overshoot by one per extra process).
- **Cost.** The vanilla model is loaded once per process and each trial's method hands back an
  edit with the model restored (every method does: ``methods/base.py``); the evaluation items
  (and their encoded prompts) are reused by every trial.
- **The choice.** Among the Pareto front (no other trial better in both objectives), the trial
  with the best harmonic mean (of forget efficacy and retention, per modality, averaged over
  modalities; ties: the earlier trial). Saved as ``OUT/preset.json``.

Output folder: ``trials.json`` (every trial's values and figures), ``front.json``, ``summary.json``
(the vanilla model's validation figures, the validation people, the chosen trial),
``preset.json``, ``report.md`` and ``report.html`` (the front as a table and a plot).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..data.items import Benchmark
from ..data.validation import VALIDATION_SPLITS, validation_benchmark
from ..eval import EvalConfig, Evaluator
from ..eval.tradeoff import CHANCE_ACCURACY, overall, tradeoff
from ..methods import get_method
from ..methods.base import UnlearningDiverged
from ..methods.defaults import method_preset, preset_name_for
from ..methods.search_spaces import Space, apply_values, nested, sample, search_space
from ..report.sweep import sweep_html, sweep_markdown
from ..utils import atomic_write_text, seed_everything, stable_hash
from .prepare import prepare_benchmark, prepare_vanilla
from .presets import PRESET_FORMAT, model_built_here, model_family_for_presets
from .vanilla_figures import cached_value, settings, vanilla_cache

CHOICE_RULE = ("the Pareto-front trial (forget efficacy vs retention, each averaged over VQA and QA) with the best "
               "harmonic mean of forget efficacy and retention per modality, averaged over modalities; ties: the "
               "earlier trial")


@dataclass
class SweepConfig:
    method: str
    trials: int = 20
    out_dir: str = "runs/sweep"
    storage: str | None = None  # an Optuna storage URL; default sqlite:///OUT/study.db
    study_name: str | None = None  # default: the method's name
    max_items_per_group: int | None = None  # subsample each validation split x modality (seeded)
    # The choice only: among front trials whose retention is at least this (when any is), the best
    # harmonic mean. None: the whole front.
    min_retention: float | None = None
    # Options every trial uses and the space does not search (e.g. {"extra.layer": 1, "batch_size": 8}),
    # over the method's defaults; part of the preset.
    fixed: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"SweepConfig.trials must be >= 1, got {self.trials}")
        if self.min_retention is not None and not 0 <= self.min_retention <= 1:
            raise ValueError(f"SweepConfig.min_retention must lie in [0, 1], got {self.min_retention}")


# --- the sweep -------------------------------------------------------------------------------
def _storage_url(sweep: SweepConfig) -> str:
    if sweep.storage:
        return sweep.storage if "://" in sweep.storage else f"sqlite:///{Path(sweep.storage).resolve()}"
    return f"sqlite:///{(Path(sweep.out_dir) / 'study.db').resolve()}"


def open_storage(url: str, attempts: int = 5) -> Any:
    """Optuna's RDB storage at ``url``. Processes started together may race to create a new SQLite
    file's tables (one gets "table ... already exists"): retried. SQLite waits up to 60 s for a
    lock held by another process instead of failing at once."""
    import time

    import optuna
    from sqlalchemy.exc import OperationalError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)]


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of the trial after ``number`` earlier ones: fixed by the sweep seed alone."""
    return int(stable_hash(["sweep-trial", seed, number])[:8], 16)


def run_sweep(cfg: Any, sweep: SweepConfig, space: Space | None = None,
              on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search ``sweep.method``'s ``space`` (default: the method's declared ``search_space``) on the validation
    split of ``cfg``'s benchmark with ``cfg``'s vanilla model; write the output folder; return its
    summary (``front``, ``chosen``, ``preset`` path, ``trials``). ``cfg`` is a ``pipeline.RunConfig``."""
    import optuna
    import torch

    space = dict(space if space is not None else search_space(sweep.method))
    fixed = {name: value for name, value in sweep.fixed.items() if name not in space}
    # Values the space does not search: the model's preset (tiny or the papers'), then fixed options.
    base = method_preset(sweep.method, preset_name_for(model_built_here(cfg)), seed=cfg.seed,
                         family=model_family_for_presets(cfg))
    base_cfg = apply_values(replace(base, progress=False), fixed,
                            source="sweep's fixed options")
    get_method(sweep.method).check_options(base_cfg)
    if cfg.benchmark == "clear":
        raise ValueError("mllm-unlearn sweep measures on an MLLMU-Bench-layout benchmark; CLEAR is not supported")
    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    benchmark, benchmark_key = prepare_benchmark(cfg)
    validation = validation_benchmark(benchmark, cfg.seed)
    identity = {"method": sweep.method, "seed": cfg.seed, "benchmark": benchmark_key,
                "validation_people": validation.meta.get("people"), "space": {k: list(v) for k, v in space.items()},
                "fixed": fixed}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=sweep.study_name or sweep.method, storage=open_storage(_storage_url(sweep)),
                                directions=["maximize", "maximize"], load_if_exists=True)
    recorded = study.user_attrs.get("identity")
    if recorded is None:
        study.set_user_attr("identity", identity)
    elif recorded != json.loads(json.dumps(identity)):
        changed = sorted(k for k in identity if json.loads(json.dumps(identity[k])) != recorded.get(k))
        raise ValueError(f"the study {study.study_name!r} in {_storage_url(sweep)} was made with other settings "
                         f"({', '.join(changed)} differ): use another --out, --storage or --study-name")

    state: dict[str, Any] = {}

    def vanilla_state() -> tuple[Any, Evaluator, dict[str, Any]]:
        if "vlm" not in state:  # loaded only when a trial is left to run
            vlm, model_path, _ = prepare_vanilla(cfg, benchmark, benchmark_key)
            evaluator = Evaluator(vlm, EvalConfig(tasks=("mcq",), splits=VALIDATION_SPLITS, batch_size=cfg.eval.batch_size,
                                                  max_items_per_group=sweep.max_items_per_group, seed=cfg.seed,
                                                  progress=False))
            cache = vanilla_cache(cfg, model_path, vlm)  # the same vanilla figures as an earlier sweep's
            vanilla = cached_value(cache, "sweep", evaluator.items_read(validation), settings(evaluator.cfg),
                                   lambda: evaluator.evaluate(validation)["figures"])
            state.update(vlm=vlm, model_path=model_path, evaluator=evaluator, vanilla=vanilla)
            if study.user_attrs.get("vanilla") is None:
                study.set_user_attr("vanilla", state["vanilla"])
                study.set_user_attr("model_path", model_path)
        return state["vlm"], state["evaluator"], state["vanilla"]

    def objective(trial: Any) -> tuple[float, float]:
        state["trial"] = trial.number
        vlm, evaluator, vanilla = vanilla_state()
        values = sample(space, trial)
        method_cfg = apply_values(base_cfg, values, source=f"search space of {sweep.method}")
        method = get_method(sweep.method)
        retain = validation.retain_train + (validation.prior_knowledge() if method.uses_prior_knowledge else [])
        seed_everything(cfg.seed)
        try:
            edit = method.unlearn(vlm, validation.forget_train, retain, method_cfg)
        except UnlearningDiverged as error:  # the last finite step's edit is measured, and the trial marked
            edit = error.last_good
            trial.set_user_attr("diverged", str(error))
        figures = evaluator.evaluate(validation, edit)["figures"]
        del edit
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        per_modality = tradeoff(vanilla, figures)
        summary = overall(per_modality)
        trial.set_user_attr("values", nested({**fixed, **values}))
        trial.set_user_attr("figures", figures)
        trial.set_user_attr("tradeoff", per_modality)
        trial.set_user_attr("overall", summary)
        return (summary["forget_efficacy"] or 0.0, summary["retention"] or 0.0)

    while len(_finished(study)) < sweep.trials:
        # constant_liar: trials other processes are running count as bad, so they are not sampled twice.
        study.sampler = optuna.samplers.TPESampler(seed=trial_seed(cfg.seed, len(study.trials)), constant_liar=True)
        study.optimize(objective, n_trials=1, catch=(FloatingPointError,))
        if on_trial is not None:  # the trial this process ran (others may share the storage)
            on_trial(trial_record(next(t for t in study.get_trials(deepcopy=False) if t.number == state["trial"])))
        write_outputs(study, sweep, validation, cfg)  # after each trial: an interrupted sweep keeps its figures
    return write_outputs(study, sweep, validation, cfg)


def trial_record(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name, "values": attrs.get("values"),
            "objectives": {"forget_efficacy": trial.values[0], "retention": trial.values[1]} if trial.values else None,
            "overall": attrs.get("overall"), "tradeoff": attrs.get("tradeoff"), "figures": attrs.get("figures"),
            **({"diverged": attrs["diverged"]} if "diverged" in attrs else {})}


def choose(front: list[dict[str, Any]], min_retention: float | None = None) -> dict[str, Any]:
    """The front's trial with the best harmonic mean (``CHOICE_RULE``), among those keeping at least
    ``min_retention`` when any does."""
    kept = [t for t in front if min_retention is None or t["objectives"]["retention"] >= min_retention]
    return max(kept or front, key=lambda t: ((t["overall"] or {}).get("harmonic_mean") or 0.0, -t["number"]))


def choice_rule(min_retention: float | None) -> str:
    if min_retention is None:
        return CHOICE_RULE
    return (f"{CHOICE_RULE}; only trials with retention >= {min_retention} (the whole front when none has)")


def write_outputs(study: Any, sweep: SweepConfig, validation: Benchmark, cfg: Any) -> dict[str, Any]:
    from optuna.trial import TrialState

    out = Path(sweep.out_dir)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    front_numbers = {t.number for t in study.best_trials}
    front = sorted((t for t in trials if t["number"] in front_numbers),
                   key=lambda t: (-t["objectives"]["forget_efficacy"], t["number"]))
    summary: dict[str, Any] = {"method": sweep.method, "study": study.study_name, "storage": _storage_url(sweep),
                               "validation": validation.meta, "vanilla": study.user_attrs.get("vanilla"),
                               "chance_accuracy": CHANCE_ACCURACY, "rule": choice_rule(sweep.min_retention),
                               "trials": trials, "front": front}
    atomic_write_text(out / "trials.json", json.dumps(trials, indent=2))
    atomic_write_text(out / "front.json", json.dumps(front, indent=2))
    if front:
        chosen = choose(front, sweep.min_retention)
        preset = {"format": PRESET_FORMAT, "method": sweep.method, "values": chosen["values"],
                  "chosen_by": {"rule": choice_rule(sweep.min_retention), "trial": chosen["number"], "objectives": chosen["objectives"],
                                "overall": chosen["overall"], "tradeoff": chosen["tradeoff"],
                                "trials": len(trials), "study": study.study_name, "storage": _storage_url(sweep),
                                "seed": cfg.seed},
                  "validation": validation.meta, "model": study.user_attrs.get("model_path"),
                  "family": cfg.family, "benchmark": study.user_attrs.get("identity", {}).get("benchmark")}
        atomic_write_text(out / "preset.json", json.dumps(preset, indent=2))
        summary.update(chosen=chosen, preset=str(out / "preset.json"))
    atomic_write_text(out / "summary.json", json.dumps({k: v for k, v in summary.items() if k not in ("trials", "front")},
                                                       indent=2))
    atomic_write_text(out / "report.md", sweep_markdown(summary))
    atomic_write_text(out / "report.html", sweep_html(summary))
    return summary


# --- report ----------------------------------------------------------------------------------
