"""Three verdicts on whether someone is still known, from ``right`` answers out of ``questions``
at a chance level: *still known*, *forgotten* or *undetermined*. Nobody is forgotten by default.

- **still known**: the accuracy exceeds chance + ``margin`` points **and** that many right answers
  are unlikely at chance: one-sided binomial test, p <= ``alpha`` (``alpha`` 1 switches the test off).
- **forgotten**: not still known, **and** the same test had power >= ``min_power`` to call the
  person still known had they answered at the vanilla model's own recall level (``known``, the
  vanilla model's accuracy on the same questions of every forget person, pooled). The verdict then
  carries a type II error of at most 1 - ``min_power`` against "still known as well as before"; it
  does not rule out partial knowledge well below that level.
- **undetermined**: neither, i.e. too few questions (or a recall level too close to chance) for
  the test to have that power, or no recall level at all (no vanilla model measured).

The power is P(X >= k) for X ~ Binomial(questions, known / 100), where k is the fewest right
answers the still-known rule accepts. Worked cases at chance 25%, ``alpha`` 0.05, margin 10,
``min_power`` 0.8:

- 4 questions: 3 of 4 has p = 0.051, so only 4 of 4 counts as still known (p = 0.004). A vanilla
  recall of 75% gives power 0.75^4 = 0.32: even 0 of 4 right is *undetermined* (a person still
  known at 75% answers fewer than 4 of 4 two times in three). A recall of 95% gives power 0.81:
  0-3 of 4 right is *forgotten*.
- 5 questions (the built-in world): 4 of 5 is still known (p = 0.016); power 0.63 at a 75% recall
  (undetermined), 0.98 at 95% (forgotten at 0-3 right; 4-5 right is still known).
- One question per person (a name probe): chance 7.1% (14 candidates) is above ``alpha``, so a hit
  never counts and no miss can be forgotten: *undetermined*; at chance 5% (20 candidates) a hit is
  still known and a miss is forgotten only with a recall of at least 80%.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from scipy.stats import binom

FORGOTTEN = "forgotten"
STILL_KNOWN = "still known"
UNDETERMINED = "undetermined"
VERDICTS = (FORGOTTEN, STILL_KNOWN, UNDETERMINED)
DEFAULT_ALPHA = 0.05
DEFAULT_MARGIN = 10.0  # points above chance
DEFAULT_MIN_POWER = 0.8


def p_above_chance(right: int, questions: int, chance_pct: float) -> float:
    """One-sided binomial p-value: P(X >= right) for X ~ Binomial(questions, chance)."""
    return float(binom.sf(right - 1, questions, chance_pct / 100.0))


def is_still_known(right: int, questions: int, chance_pct: float, margin: float = DEFAULT_MARGIN,
                   alpha: float = DEFAULT_ALPHA) -> tuple[bool, float]:
    """(whether ``right`` of ``questions`` is still known, the binomial p-value at chance)."""
    p_value = p_above_chance(right, questions, chance_pct)
    accuracy = 100.0 * right / questions
    return accuracy > chance_pct + margin and (alpha >= 1.0 or p_value <= alpha), p_value


@lru_cache(maxsize=4096)
def fewest_still_known(questions: int, chance_pct: float, margin: float = DEFAULT_MARGIN,
                       alpha: float = DEFAULT_ALPHA) -> int | None:
    """The fewest right answers out of ``questions`` that the still-known rule accepts (None: none does)."""
    return next((k for k in range(questions + 1) if is_still_known(k, questions, chance_pct, margin, alpha)[0]), None)


def power(questions: int, chance_pct: float, known_pct: float, margin: float = DEFAULT_MARGIN,
          alpha: float = DEFAULT_ALPHA) -> float:
    """P(the still-known rule fires) for someone answering at ``known_pct`` % on ``questions`` questions."""
    k = fewest_still_known(questions, chance_pct, margin, alpha)
    return 0.0 if k is None else float(binom.sf(k - 1, questions, known_pct / 100.0))


def verdict(right: int, questions: int, chance_pct: float, known_pct: float | None, margin: float = DEFAULT_MARGIN,
            alpha: float = DEFAULT_ALPHA, min_power: float = DEFAULT_MIN_POWER) -> dict[str, Any]:
    """``{"verdict", "accuracy", "right", "questions", "chance", "p_value", "power", "reason"}``
    for ``right`` of ``questions`` at chance, against a recall level ``known_pct`` (None: unknown)."""
    still, p_value = is_still_known(right, questions, chance_pct, margin, alpha)
    test_power = None if known_pct is None else power(questions, chance_pct, known_pct, margin, alpha)
    out: dict[str, Any] = {"accuracy": 100.0 * right / questions, "right": right, "questions": questions,
                           "chance": chance_pct, "p_value": p_value, "power": test_power}
    if still:
        return {**out, "verdict": STILL_KNOWN, "reason": f"{right}/{questions} right, p = {p_value:.3g} at chance"}
    if test_power is None:
        return {**out, "verdict": UNDETERMINED, "reason": "no recall level of the vanilla model to test against"}
    if test_power < min_power:
        return {**out, "verdict": UNDETERMINED,
                "reason": f"{questions} questions give power {test_power:.2f} < {min_power:g} to detect the vanilla "
                          f"model's recall of {known_pct:.0f}%"}
    return {**out, "verdict": FORGOTTEN, "reason": f"{right}/{questions} right, not above chance; power "
                                                   f"{test_power:.2f} at a recall of {known_pct:.0f}%"}


def combine(per_probe: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, list[str]]]:
    """One verdict from several probes' (only those that count): still known when any probe says
    so; forgotten when none does and at least one says forgotten; else undetermined. Returns it
    and the probes per verdict."""
    by_verdict = {v: sorted(p for p, r in per_probe.items() if r["verdict"] == v) for v in VERDICTS}
    if by_verdict[STILL_KNOWN]:
        return STILL_KNOWN, by_verdict
    return (FORGOTTEN if by_verdict[FORGOTTEN] else UNDETERMINED), by_verdict


def counts(verdicts: Iterable[str]) -> dict[str, int]:
    """How many of each verdict (every verdict present, 0 if none)."""
    found = list(verdicts)
    return {v: found.count(v) for v in VERDICTS}


def person_tallies(predictions: Iterable[Mapping[str, Any]], split: str = "forget",
                   task: str = "mcq") -> dict[str, dict[str, list[int]]]:
    """person_id -> modality -> [right, questions] from a run's item records."""
    out: dict[str, dict[str, list[int]]] = {}
    for record in predictions:
        if record.get("split") == split and record.get("task") == task and "correct" in record:
            cell = out.setdefault(str(record["person_id"]), {}).setdefault(record["modality"], [0, 0])
            cell[0] += bool(record["correct"])
            cell[1] += 1
    return out


def per_person_verdicts(predictions: Iterable[Mapping[str, Any]], vanilla_predictions: Iterable[Mapping[str, Any]],
                    chance_pct: float, split: str = "forget", task: str = "mcq", margin: float = DEFAULT_MARGIN,
                    alpha: float = DEFAULT_ALPHA, min_power: float = DEFAULT_MIN_POWER) -> dict[str, dict[str, dict[str, Any]]]:
    """person_id -> modality -> ``verdict(...)`` of ``split``'s people on ``task`` questions; the
    recall level is the vanilla model's accuracy on the same split and modality, pooled."""
    tallies = person_tallies(predictions, split, task)
    known: dict[str, list[int]] = {}
    for by_modality in person_tallies(vanilla_predictions, split, task).values():
        for modality, (right, total) in by_modality.items():
            cell = known.setdefault(modality, [0, 0])
            cell[0] += right
            cell[1] += total
    return {person: {modality: verdict(right, total, chance_pct,
                                       100.0 * known[modality][0] / known[modality][1] if modality in known else None,
                                       margin, alpha, min_power)
                     for modality, (right, total) in by_modality.items()}
            for person, by_modality in sorted(tallies.items())}
