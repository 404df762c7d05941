"""Chance-corrected forget efficacy, retention and their harmonic mean (the trade-off figures).

For classification accuracy (%) with ``chance`` = 100 / number of options (25% for MLLMU-Bench's
four options):

- forget efficacy = clip((vanilla - acc) / (vanilla - chance), 0, 1): 0 = nothing forgotten,
  1 = the forget accuracy is at chance. Falling *below* chance earns nothing more (a model that
  avoids the right letter still knows it), which ``1 - acc / vanilla`` rewarded.
- retention = clip(acc / vanilla, 0, 1) on the retain and real-world splits: 1 = as vanilla.
- harmonic mean of a modality's forget efficacy and its retention (the mean of its retain and
  real-world retentions): high only when both are.

Each figure is measured only where the vanilla model's own accuracy on that split is above chance
by a significant margin: one-sided binomial test at chance with the split's item count, p <=
``ALPHA`` (0.05). Otherwise the figure is *not measurable* (None) and ``not_measurable`` says why:
efficacy on a vanilla model at chance measures nothing forgotten, and retention on a vanilla model
at or below chance would be clipped into a perfect 1.00 by an unlearned model that guesses as well.
The harmonic mean needs both of its parts. Each cell keeps the item counts and the vanilla's p-values.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..data.items import OPTION_KEYS
from .verdicts import is_still_known

CHANCE_ACCURACY = 100.0 / len(OPTION_KEYS)  # MLLMU-Bench's four options
FORGET_SPLITS = ("forget", "test")  # efficacy is reported on each
RETAIN_SPLITS = ("retain", "real_world")  # retention is reported on each; their mean enters the harmonic mean
ACCURACY = "mcq_accuracy"
COUNT = "mcq_count"
ALPHA = 0.05  # the vanilla figure must beat chance at this significance for a trade-off figure to count


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def forget_efficacy(accuracy: float, vanilla: float, chance: float = CHANCE_ACCURACY) -> float | None:
    """clip((vanilla - accuracy) / (vanilla - chance), 0, 1); None when vanilla <= chance."""
    if vanilla <= chance:
        return None
    return _clip((vanilla - accuracy) / (vanilla - chance))


def retention(accuracy: float, vanilla: float) -> float | None:
    """clip(accuracy / vanilla, 0, 1); None when vanilla is 0."""
    if vanilla <= 0:
        return None
    return _clip(accuracy / vanilla)


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """2ab / (a + b) of two figures in [0, 1]; 0 when both are 0, None when either is undefined."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _accuracy(figures: Mapping[str, Any], split: str, modality: str) -> float | None:
    value = figures.get(split, {}).get(modality, {}).get(ACCURACY)
    return None if value is None else float(value)


def _count(figures: Mapping[str, Any], split: str, modality: str) -> int | None:
    value = figures.get(split, {}).get(modality, {}).get(COUNT)
    return None if value is None else int(value)


def vanilla_above_chance(accuracy: float, items: int | None, chance: float = CHANCE_ACCURACY,
                         alpha: float = ALPHA) -> tuple[bool, float | None, str | None]:
    """(whether ``accuracy`` % on ``items`` items beats chance significantly, the one-sided binomial
    p-value, the reason when it does not)."""
    if not items:
        return False, None, "no item count to test the vanilla model's accuracy against chance"
    right = round(accuracy * items / 100.0)
    above, p_value = is_still_known(right, items, chance, margin=0.0, alpha=alpha)
    if above:
        return True, p_value, None
    return False, p_value, (f"the vanilla model's accuracy {accuracy:.1f}% ({right}/{items}) is not significantly above "
                            f"chance {chance:.1f}% (one-sided binomial p = {p_value:.3g} > {alpha:g})")


def tradeoff(vanilla: Mapping[str, Any], unlearned: Mapping[str, Any], chance: float = CHANCE_ACCURACY,
             modalities: tuple[str, ...] = ("vqa", "qa"), alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Per modality: ``<split>_efficacy`` for forget and test, ``<split>_retention`` for retain and
    real-world, ``retention`` (their mean), ``harmonic_mean`` (forget efficacy vs retention), and
    ``items`` (split -> vanilla and unlearned item counts), ``vanilla_p_value`` (split -> the
    vanilla's binomial p at chance) and ``not_measurable`` (figure -> why it is None).

    ``vanilla``/``unlearned`` are evaluation figures (split -> modality -> metrics, classification
    accuracy in % with its ``mcq_count``). Splits a figure set lacks are left out; a modality with
    no figure at all too.
    """
    out: dict[str, dict[str, Any]] = {}
    for modality in modalities:
        cell: dict[str, Any] = {}
        items: dict[str, dict[str, int | None]] = {}
        p_values: dict[str, float | None] = {}
        reasons: dict[str, str] = {}

        def measurable(split: str, key: str) -> tuple[float, float] | None:
            before, after = _accuracy(vanilla, split, modality), _accuracy(unlearned, split, modality)
            if before is None or after is None:
                return None
            items[split] = {"vanilla": _count(vanilla, split, modality), "unlearned": _count(unlearned, split, modality)}
            known, p_values[split], reason = vanilla_above_chance(before, items[split]["vanilla"], chance, alpha)
            cell[key] = None
            if not known:
                reasons[key] = reason or ""
                return None
            return before, after

        for split in FORGET_SPLITS:
            pair = measurable(split, f"{split}_efficacy")
            if pair is not None:
                cell[f"{split}_efficacy"] = forget_efficacy(pair[1], pair[0], chance)
        kept = []
        for split in RETAIN_SPLITS:
            pair = measurable(split, f"{split}_retention")
            if pair is not None:
                cell[f"{split}_retention"] = retention(pair[1], pair[0])
                kept.append(cell[f"{split}_retention"])
        if not cell:
            continue
        cell["retention"] = _mean(kept)
        if cell["retention"] is None:
            reasons["retention"] = "no measurable retain or real-world retention"
        cell["harmonic_mean"] = harmonic_mean(cell.get("forget_efficacy"), cell["retention"])
        if cell["harmonic_mean"] is None:
            reasons["harmonic_mean"] = "needs a measurable forget efficacy and retention"
        out[modality] = {**cell, "items": items, "vanilla_p_value": p_values, "not_measurable": reasons}
    return out


def overall(per_modality: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Means over modalities of forget efficacy, retention and harmonic mean, over the modalities where
    each is measurable (the sweep's objectives and its choice rule)."""
    return {key: _mean([cell.get(key) for cell in per_modality.values()])
            for key in ("forget_efficacy", "retention", "harmonic_mean")}
