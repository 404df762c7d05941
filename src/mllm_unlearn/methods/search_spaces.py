"""The format of what ``mllm-unlearn sweep`` searches: each method declares its space with itself
(``Method.search_space`` in its file).

A space maps an option to a distribution: ``("log", low, high)`` (log-uniform float),
``("float", low, high)``, ``("int", low, high)`` (inclusive) or ``("choice", [values])``.
Option names are ``MethodConfig`` fields (``lr``, ``epochs``, ``retain_weight``...) or
``extra.<key>`` for a method-specific option (``-o key=value``). Options not searched keep the
method's tiny preset. Ranges bracket the tiny-model defaults and their recorded sweeps; a user can
search other ranges by passing a space of their own to ``jobs.sweep.run_sweep``.
"""
from __future__ import annotations

import copy
from typing import Any

from .base import METHODS, MethodConfig, available_methods

Space = dict[str, tuple]


def search_space(method: str) -> Space:
    """The search space ``method`` declares (``Method.search_space``); a clear error for a method without one."""
    searchable = searchable_methods()
    if method not in searchable:
        raise ValueError(f"no search space for method {method!r}; spaces exist for {', '.join(sorted(searchable))} "
                         "(each method file's search_space)")
    return METHODS[method].search_space


def searchable_methods() -> list[str]:
    """The methods that declare a search space (what ``mllm-unlearn sweep`` and derive_presets.py can search)."""
    return [name for name in available_methods() if METHODS[name].search_space]


def sample(space: Space, trial: Any) -> dict[str, Any]:
    """One point of ``space`` drawn through an Optuna trial: option name -> value."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        kind, *args = spec
        if kind == "log":
            values[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            values[name] = trial.suggest_float(name, args[0], args[1])
        elif kind == "int":
            values[name] = trial.suggest_int(name, args[0], args[1])
        elif kind == "choice":
            values[name] = trial.suggest_categorical(name, list(args[0]))
        else:
            raise ValueError(f"search space option {name!r}: unknown distribution {kind!r} "
                             "(log, float, int or choice)")
    return values


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Flat option names (``extra.alpha``) as a preset's values: ``{"lr": ..., "extra": {"alpha": ...}}``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name.startswith("extra."):
            out.setdefault("extra", {})[name.removeprefix("extra.")] = value
        else:
            out[name] = value
    return out


def apply_values(cfg: MethodConfig, values: dict[str, Any], source: str = "preset") -> MethodConfig:
    """``cfg`` with ``values`` (a preset's nested values, or flat ``extra.key`` names) applied:
    fields replaced, ``extra`` merged key by key. Unknown fields raise a ValueError naming ``source``."""
    from dataclasses import fields, replace

    known = {f.name for f in fields(MethodConfig)} - {"extra", "lora", "progress", "seed"}
    flat = nested(values)
    extra = flat.pop("extra", {})
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; options are {sorted(known)} and 'extra'")
    if not isinstance(extra, dict):
        raise ValueError(f"{source}: 'extra' must be an object of method options, got {extra!r}")
    try:
        return replace(cfg, **flat, extra={**copy.deepcopy(cfg.extra), **extra})
    except ValueError as error:  # MethodConfig's own check of a value: named with the file it came from
        raise ValueError(f"{source}: {error}") from None
