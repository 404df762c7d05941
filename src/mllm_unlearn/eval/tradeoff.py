"""Chance-corrected forget efficacy, retention and their harmonic mean (the trade-off figures).

For classification accuracy (%) with ``chance`` = 100 / number of options (25% for MLLMU-Bench's
four options):

- forget efficacy = clip((vanilla - acc) / (vanilla - chance), 0, 1): 0 = nothing forgotten,
  1 = the forget accuracy is at chance. Falling *below* chance earns nothing more (a model that
  avoids the right letter still knows it), which ``1 - acc / vanilla`` rewarded.
- retention = clip(acc / vanilla, 0, 1) on the retain and real-world splits: 1 = as vanilla.
- harmonic mean of a modality's forget efficacy and its retention (the mean of its retain and
  real-world retentions): high only when both are.

Undefined cases give None: efficacy when the vanilla model is not above chance (nothing to
forget), retention when vanilla accuracy is 0.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..data.items import OPTION_KEYS

CHANCE_ACCURACY = 100.0 / len(OPTION_KEYS)  # MLLMU-Bench's four options
FORGET_SPLITS = ("forget", "test")  # efficacy is reported on each
RETAIN_SPLITS = ("retain", "real_world")  # retention is reported on each; their mean enters the harmonic mean
ACCURACY = "mcq_accuracy"


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


def tradeoff(vanilla: Mapping[str, Any], unlearned: Mapping[str, Any], chance: float = CHANCE_ACCURACY,
             modalities: tuple[str, ...] = ("vqa", "qa")) -> dict[str, dict[str, float | None]]:
    """Per modality: ``<split>_efficacy`` for forget and test, ``<split>_retention`` for retain and
    real-world, ``retention`` (their mean), and ``harmonic_mean`` (forget efficacy vs retention).

    ``vanilla``/``unlearned`` are evaluation figures (split -> modality -> metrics, classification
    accuracy in %). Splits a figure set lacks are left out; a modality with no figure at all too.
    """
    out: dict[str, dict[str, float | None]] = {}
    for modality in modalities:
        cell: dict[str, float | None] = {}
        for split in FORGET_SPLITS:
            before, after = _accuracy(vanilla, split, modality), _accuracy(unlearned, split, modality)
            if before is not None and after is not None:
                cell[f"{split}_efficacy"] = forget_efficacy(after, before, chance)
        kept = []
        for split in RETAIN_SPLITS:
            before, after = _accuracy(vanilla, split, modality), _accuracy(unlearned, split, modality)
            if before is not None and after is not None:
                cell[f"{split}_retention"] = retention(after, before)
                kept.append(cell[f"{split}_retention"])
        if not cell:
            continue
        cell["retention"] = _mean(kept)
        cell["harmonic_mean"] = harmonic_mean(cell.get("forget_efficacy"), cell["retention"])
        out[modality] = cell
    return out


def overall(per_modality: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Means over modalities of forget efficacy, retention and harmonic mean (the sweep's objectives
    and its choice rule)."""
    return {key: _mean([cell.get(key) for cell in per_modality.values()])
            for key in ("forget_efficacy", "retention", "harmonic_mean")}
