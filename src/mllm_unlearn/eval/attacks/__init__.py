"""The attack battery: does forgotten knowledge come back by cheaper routes than relearning?

One file per attack, one interface (``base.Attack``): quantization, logit lens, prompt attacks,
benign relearning, cross-modal probes. ``run_battery`` runs the chosen ones on a model with its
edit (each attack also measures the vanilla model as the positive control, and a sample of
retain people as the negative control) and ends with the forgetting certificate
(``certificate.py``). Every attack leaves the model exactly as it found it.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from ..stages import run_stage
from . import benign_relearn, cross_modal, logit_lens, prompt, quantization  # noqa: F401  (registration)
from .base import (
    ATTACKS,
    Attack,
    AttackConfig,
    AttackNotApplicable,
    AttackResult,
    accuracy_table,
    attack_evaluator,
    edited,
    person_names,
    probe_sets,
    score_mcq,
    stages,
)
from .certificate import build_certificate

# The order the battery runs them: the cheap read-outs first, the fine-tuning last.
ATTACK_ORDER = ("quantization", "logit_lens", "prompt", "cross_modal", "benign_relearn")
BASELINE = "plain"  # the model's own answers to the probed questions (no attack)

__all__ = ["ATTACKS", "ATTACK_ORDER", "Attack", "AttackConfig", "AttackNotApplicable", "AttackResult", "BASELINE",
           "build_certificate", "parse_attacks", "run_battery"]


def parse_attacks(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--attacks``: "all" (every attack), "none" (no battery) or a comma list of names."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else (text or ["all"])) if t.strip()]
    if names in (["all"], []):
        return ATTACK_ORDER
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"--attacks: unknown attack(s) {unknown}; known: {', '.join(ATTACK_ORDER)}, or all / none")
    return tuple(n for n in ATTACK_ORDER if n in names)


def baseline(vlm: Any, benchmark: Any, edit: Any, cfg: AttackConfig) -> dict[str, Any]:
    """The probed questions answered plainly, with the edit and without (probe ``plain``)."""
    sets = probe_sets(benchmark, cfg)
    evaluator = attack_evaluator(vlm, cfg)
    records = []
    for stage, stage_edit in stages(edit):
        with edited(vlm, stage_edit):
            records += score_mcq(evaluator, sets, BASELINE, stage)
    return {"figures": {"accuracy": accuracy_table(records).get(BASELINE, {}),
                        "control_people": sorted({i.person_id for i in sets.retain})},
            "records": records}


def run_battery(vlm: Any, benchmark: Any, edit: Any, cfg: AttackConfig,
                on_stage: Callable[[str, dict[str, Any]], None] | None = None,
                timings: dict[str, float] | None = None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every attack of ``cfg.attacks`` in ``ATTACK_ORDER``, then the certificate.

    Returns ``{"baseline", <attack>..., "certificate"}``; each attack's outcome is
    ``{"figures", "records"}``, ``{"skipped": why}`` or ``{"failed": {...}}`` (an attack that
    raises is recorded and the next one runs: a failed attack never loses earlier figures).
    ``on_stage(key, outcome)`` is called after each; ``timings`` gains "attack: <name>" seconds.
    ``previous``: outcomes of an earlier battery on the same model, edit and settings; those of
    attacks not run now are kept (returned, and pooled into the certificate)."""
    names = parse_attacks(cfg.attacks)
    timings = timings if timings is not None else {}
    out: dict[str, Any] = {}

    def finish(key: str, outcome: dict[str, Any]) -> None:
        out[key] = outcome
        if on_stage is not None:
            on_stage(key, outcome)

    def attempt(name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
        outcome = run_stage(f"{name} attack", work, not_applicable=(AttackNotApplicable,))
        timings[f"attack: {name}"] = time.perf_counter() - start
        finish(name, outcome)
        return outcome

    first = attempt(BASELINE, lambda: baseline(vlm, benchmark, edit, cfg))
    if "skipped" in first:  # the benchmark cannot support the battery
        for key in (*names, "certificate"):
            finish(key, {"skipped": first["skipped"]})
        return out
    for name in names:
        attempt(name, lambda name=name: ATTACKS[name].run(vlm, benchmark, edit, cfg).to_dict())
    kept = {name: outcome for name, outcome in (previous or {}).items()
            if name in ATTACKS and name not in names and "records" in outcome}
    out.update(kept)
    records = [r for key, outcome in out.items() for r in outcome.get("records", [])]
    finish("certificate", build_certificate(records, cfg, benchmark.forget_ids, person_names(benchmark),
                                            [n for n in ATTACK_ORDER if "records" in out.get(n, {})]))
    return out
