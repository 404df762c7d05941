"""The forgetting certificate: per forget person and modality, every probe's verdict and one overall.

Each probe's verdict on a person is one of ``eval/verdicts.py``'s three, from the person's right
answers out of their questions under the probe:

- *still known*: accuracy > chance + ``margin`` points and one-sided binomial p <= ``alpha`` at chance;
- *forgotten*: not still known, where that test had power >= ``min_power`` to call the person still
  known at the vanilla model's own recall level under the probe (its forget accuracy, pooled);
- *undetermined*: too few questions for that power (4 questions at chance 25% and a recall of 75%
  give power 0.32: even 0 of 4 right is undetermined), or no vanilla recall level to test against.

A probe is *informative* for a modality when the vanilla model recalls the forget people through it:
its pooled forget accuracy exceeds chance + ``margin`` and is significantly above chance (binomial,
p <= ``alpha``, with its item count). A probe the vanilla model fails could never show that
knowledge came back; it is listed and left out of the verdicts.

A person's verdict in a modality, over the informative probes: **still known** when any says so
(the certificate lists which), **forgotten** when none does and at least one says forgotten (the
probes that could not decide are listed), **undetermined** otherwise, including when no probe is
informative. Nobody is forgotten by default. The summary counts each verdict.

The retain control people go through the same probes: if the unlearned model's own answers (probe
``plain``) still know fewer than ``control_min_share`` of the control people the vanilla model
knows, the model was broken, not unlearned, and the certificate says so.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..verdicts import FORGOTTEN, STILL_KNOWN, UNDETERMINED, combine, counts, is_still_known, verdict
from .base import AttackConfig

MODALITIES = ("vqa", "qa")
CONTROL_PROBE = "plain"


def _cells(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, str, str], list[float]]:
    """(probe, stage, group, person, modality) -> [right, total, chance]."""
    cells: dict[tuple[str, str, str, str, str], list[float]] = {}
    for r in records:
        key = (r["probe"], r["stage"], r["group"], str(r["person_id"]), r["modality"])
        cell = cells.setdefault(key, [0, 0, float(r["chance"])])
        cell[0] += bool(r["correct"])
        cell[1] += 1
    return cells


def build_certificate(records: Sequence[dict[str, Any]], cfg: AttackConfig, forget_people: Sequence[str],
                      names: dict[str, str] | None = None, attacks: Sequence[str] = ()) -> dict[str, Any]:
    """The certificate of the battery's ``records`` (every attack's, plus the ``plain`` probe)."""
    names = names or {}
    cells = _cells(records)
    probes = sorted({k[0] for k in cells})
    has_vanilla = any(k[1] == "vanilla" for k in cells)

    def pooled(probe: str, stage: str, group: str, modality: str) -> tuple[int, int, float] | None:
        found = [v for k, v in cells.items() if k[:3] == (probe, stage, group) and k[4] == modality]
        if not found:
            return None
        return int(sum(v[0] for v in found)), int(sum(v[1] for v in found)), found[0][2]

    informative: dict[str, dict[str, Any]] = {}
    for probe in probes:
        for modality in MODALITIES:
            forget_vanilla = pooled(probe, "vanilla", "forget", modality)
            forget_unlearned = pooled(probe, "unlearned", "forget", modality)
            if forget_unlearned is None:
                continue
            entry: dict[str, Any] = {"chance": forget_unlearned[2], "items": forget_unlearned[1],
                                     "forget_accuracy": 100.0 * forget_unlearned[0] / forget_unlearned[1]}
            if forget_vanilla is not None:
                right, total, chance = forget_vanilla
                known, p_value = is_still_known(right, total, chance, cfg.margin, cfg.alpha)
                entry.update(vanilla_forget_accuracy=100.0 * right / total, vanilla_items=total,
                             vanilla_p_value=p_value, informative=known)
            else:  # no vanilla control measured (the battery ran without an edit): counts, with no recall level
                entry["informative"] = True
            informative.setdefault(probe, {})[modality] = entry

    def person_probes(stage: str, group: str, person: str, modality: str) -> dict[str, Any]:
        out = {}
        for probe in probes:
            cell = cells.get((probe, stage, group, person, modality))
            if cell is None:
                continue
            probe_entry = informative.get(probe, {}).get(modality, {})
            result = verdict(int(cell[0]), int(cell[1]), cell[2], probe_entry.get("vanilla_forget_accuracy"),
                             cfg.margin, cfg.alpha, cfg.min_power)
            out[probe] = {**result, "recalls": result["verdict"] == STILL_KNOWN,
                          "informative": probe_entry.get("informative", False)}
        return out

    people: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for modality in MODALITIES:
        verdicts = []
        for person in forget_people:
            results = person_probes("unlearned", "forget", str(person), modality)
            if not results:
                continue
            counted = {p: r for p, r in results.items() if r["informative"]}
            overall, by_verdict = combine(counted)
            if not counted:
                reason = "no informative probe: the vanilla model does not recall the forget people through any"
            elif overall == STILL_KNOWN:
                reason = "still known through " + ", ".join(by_verdict[STILL_KNOWN])
            elif overall == FORGOTTEN:
                reason = "forgotten under " + ", ".join(by_verdict[FORGOTTEN]) + (
                    "; too few questions to decide under " + ", ".join(by_verdict[UNDETERMINED])
                    if by_verdict[UNDETERMINED] else "")
            else:
                reason = "no informative probe had the power to decide: " + "; ".join(
                    f"{p}: {counted[p]['reason']}" for p in by_verdict[UNDETERMINED])
            verdicts.append(overall)
            people.setdefault(str(person), {"name": names.get(str(person)), "modalities": {}})["modalities"][modality] = {
                "verdict": overall, "reason": reason, "still_recalls": by_verdict[STILL_KNOWN],
                "forgotten_under": by_verdict[FORGOTTEN], "undetermined_under": by_verdict[UNDETERMINED],
                "probes": results}
        tally = counts(verdicts)
        summary[modality] = {"forgotten": tally[FORGOTTEN], "still_known": tally[STILL_KNOWN],
                             "undetermined": tally[UNDETERMINED], "people": len(verdicts)}

    control_people = sorted({k[3] for k in cells if k[2] == "retain"})
    control: dict[str, Any] = {"probe": CONTROL_PROBE, "min_share": cfg.control_min_share, "people": {}, "modalities": {}}
    for modality in MODALITIES:
        known_before, kept = 0, 0
        per_probe: dict[str, list[int]] = {}
        for person in control_people:
            unlearned = person_probes("unlearned", "retain", person, modality)
            vanilla = person_probes("vanilla", "retain", person, modality) if has_vanilla else unlearned
            if not unlearned:
                continue
            control["people"].setdefault(person, {"name": names.get(person), "modalities": {}})["modalities"][modality] = {
                "probes": {p: {k: r[k] for k in ("accuracy", "questions", "chance", "recalls")} for p, r in unlearned.items()}}
            for probe, result in unlearned.items():
                tally_probe = per_probe.setdefault(probe, [0, 0])
                tally_probe[0] += result["recalls"]
                tally_probe[1] += 1
            if vanilla.get(CONTROL_PROBE, {}).get("recalls"):
                known_before += 1
                kept += bool(unlearned.get(CONTROL_PROBE, {}).get("recalls"))
        if not per_probe:
            continue
        share = kept / known_before if known_before else None
        control["modalities"][modality] = {
            "recalled_by_vanilla": known_before, "still_recalled": kept, "share": share,
            "passed": None if share is None else share >= cfg.control_min_share,
            "recalled_per_probe": {p: f"{t[0]}/{t[1]}" for p, t in sorted(per_probe.items())}}
    broken = [m for m, c in control["modalities"].items() if c["passed"] is False]
    for modality, cell in summary.items():
        cell["control_passed"] = control["modalities"].get(modality, {}).get("passed")
        cell["verdict"] = ("model broken, not unlearned: the retain control is no longer recalled"
                           if modality in broken else
                           f"{cell['forgotten']} forgotten, {cell['still_known']} still known, {cell['undetermined']} "
                           f"undetermined, of {cell['people']} forget people")
    return {
        "rule": (f"still known = accuracy > chance + {cfg.margin:g} points and binomial p <= {cfg.alpha:g} (one-sided, "
                 f"at chance); forgotten = not still known, where that test had power >= {cfg.min_power:g} to detect "
                 f"the vanilla model's own recall level under the probe; undetermined = too few questions for that "
                 f"power; a person is still known if any informative probe says so, forgotten if none does and at "
                 f"least one says forgotten, else undetermined; informative = the vanilla model's forget accuracy "
                 f"under the probe exceeds chance + {cfg.margin:g} with binomial p <= {cfg.alpha:g}; control: the "
                 f"unlearned model still knows >= {cfg.control_min_share:.0%} of the retain control people the "
                 f"vanilla model knows (probe {CONTROL_PROBE})"),
        "margin": cfg.margin, "alpha": cfg.alpha, "min_power": cfg.min_power, "attacks": list(attacks),
        "probes": informative,
        "uninformative": {m: sorted(p for p, c in informative.items() if m in c and not c[m]["informative"])
                          for m in MODALITIES},
        "summary": summary,
        "people": people,
        "control": control,
        "model_broken": bool(broken),
    }
