"""Per-method default hyperparameters (documented, overridable), by model.

Two presets: ``tiny`` (tuned here on the built-in world, for the tiny models this tool builds)
and ``paper`` (the papers' and benchmarks' settings for 7B-class checkpoints, for every model
this tool did not build). ``method_preset`` is the one lookup; ``--lr``, ``-o`` and the other
explicit options go on top of what it returns (``apply_overrides``).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import METHODS, MethodConfig, available_methods, get_method

TINY = "tiny"
PAPER = "paper"

# The method of a run that names none (`make run`): the best validation harmonic mean of forget
# efficacy and retention among the tiny presets (docs/preset-history.md#the-default-method).
DEFAULT_METHOD = "mllmeraser"


class _DeclaredPresets(Mapping):
    """Method name -> one of the presets each method declares with itself (``Method.tiny_preset``,
    ``paper_preset``), read-only; the methods register on first access."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def _table(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(METHODS[name], self.attribute) for name in available_methods()}

    def __getitem__(self, name: str) -> dict[str, Any]:
        available_methods()  # every method file registered
        return getattr(METHODS[name], self.attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


PRESET_ATTRIBUTES = {TINY: "tiny_preset", PAPER: "paper_preset"}  # preset name -> the Method attribute holding it
TINY_DEFAULTS: Mapping[str, dict[str, Any]] = _DeclaredPresets(PRESET_ATTRIBUTES[TINY])
PAPER_DEFAULTS: Mapping[str, dict[str, Any]] = _DeclaredPresets(PRESET_ATTRIBUTES[PAPER])

# The tiny preset's searched values (learning rate, epochs, strengths...: what
# each method's ``search_space`` covers), chosen by ``mllm-unlearn sweep`` on the built-in world's
# validation people and written by ``benchmarks/derive_presets.py``, with the command, rule and
# validation objectives of each choice. They go over each method's ``tiny_preset`` (the hand sweeps
# behind those: docs/preset-history.md), so no tiny default is tuned on a reported split.
# An entry's ``values`` were chosen on ``PRESET_FAMILY``'s tiny model; ``families`` holds the
# choices derived on another family's (a steering strength that suits one tiny model's activations
# need not suit another's), which that family's runs take instead.
TINY_PRESETS_FILE = Path(__file__).with_name("tiny_presets.json")
PRESET_FAMILY = "llava"


@lru_cache(maxsize=1)
def tiny_preset_entries() -> dict[str, dict[str, Any]]:
    """``TINY_PRESETS_FILE`` as written (method name -> its choice, and other families' choices)."""
    return json.loads(TINY_PRESETS_FILE.read_text()) if TINY_PRESETS_FILE.is_file() else {}


def _tiny_choice(entry: dict[str, Any], family: str | None) -> tuple[str, dict[str, Any]]:
    """(the family whose sweeps chose them, the values) of one method's entry, as ``family``'s runs take them:
    ``family``'s own choice where one was derived on its model, else the one derived on ``PRESET_FAMILY``'s."""
    own = entry.get("families", {}).get(family)
    return (family, own["values"]) if own is not None else (PRESET_FAMILY, entry["values"])


def swept_tiny_values(family: str | None = None) -> dict[str, dict[str, Any]]:
    """Method name -> the sweep-chosen values of ``TINY_PRESETS_FILE`` (nested: ``{"lr": .., "extra": {..}}``)
    that ``family``'s runs take."""
    return {name: _tiny_choice(entry, family)[1] for name, entry in tiny_preset_entries().items()}


def swept_choice_family(name: str, family: str | None) -> str | None:
    """The family on whose tiny model method ``name``'s sweep-chosen values (as ``method_preset``
    takes them for ``family``) were derived; None when ``TINY_PRESETS_FILE`` has no choice for it."""
    entry = tiny_preset_entries().get(name)
    return None if entry is None else _tiny_choice(entry, family)[0]


def preset_name_for(model_built_here: bool) -> str:
    """``tiny`` for a model this tool built (its checkpoint holds injection.json), else ``paper``."""
    return TINY if model_built_here else PAPER


def method_preset(name: str, preset: str, seed: int = 0, family: str | None = None) -> MethodConfig:
    """The method's hyperparameters from the named preset (``tiny`` or ``paper``): the one lookup
    the pipeline uses, so other preset sources (a file) can plug in here. ``family``: the tiny
    model's family, whose own sweep-chosen values win where derived (``swept_tiny_values``)."""
    method = get_method(name)  # a clear error for an unknown name
    if preset not in PRESET_ATTRIBUTES:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESET_ATTRIBUTES)}")
    values = getattr(method, PRESET_ATTRIBUTES[preset])
    cfg = MethodConfig(seed=seed, **copy.deepcopy(values))
    # The sweep-chosen values go over the structural ones as a user's options would.
    return apply_overrides(cfg, swept_tiny_values(family).get(name, {})) if preset == TINY else cfg


def method_defaults(name: str, seed: int = 0) -> MethodConfig:
    """The tiny preset (the built-in world's tuned values)."""
    return method_preset(name, TINY, seed)


def apply_overrides(cfg: MethodConfig, overrides: dict[str, Any]) -> MethodConfig:
    """``cfg`` with the user's explicit options on top: top-level fields replaced, ``extra``
    merged key by key (so ``-o beta=0.2`` keeps the preset's other options)."""
    known = {f.name for f in fields(MethodConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown method config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    top = {k: v for k, v in overrides.items() if k != "extra"}
    return replace(cfg, **top, extra={**cfg.extra, **copy.deepcopy(overrides.get("extra", {}))})
