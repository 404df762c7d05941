"""What ``mllm-unlearn sweep`` searches for each method (beside ``defaults.py``'s starting values).

A space maps an option to a distribution: ``("log", low, high)`` (log-uniform float),
``("float", low, high)``, ``("int", low, high)`` (inclusive) or ``("choice", [values])``.
Option names are ``MethodConfig`` fields (``lr``, ``epochs``, ``retain_weight``...) or
``extra.<key>`` for a method-specific option (``-o key=value``). Options not searched keep the
method's default (``defaults.TINY_DEFAULTS``). Ranges bracket the tiny-model defaults and their
recorded sweeps; a user can search other ranges by editing ``SEARCH_SPACES`` or passing a space
of their own to ``sweep.run_sweep``.
"""
from __future__ import annotations

import copy
from typing import Any

from .base import MethodConfig

Space = dict[str, tuple]

_GRADIENT: Space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4)}
SEARCH_SPACES: dict[str, Space] = {
    "ga": dict(_GRADIENT),
    "graddiff": {**_GRADIENT, "retain_weight": ("log", 0.3, 10.0)},
    "kl": {**_GRADIENT, "retain_weight": ("log", 0.3, 10.0)},
    "npo": {**_GRADIENT, "extra.beta": ("log", 0.05, 2.0)},
    "rmu": {"lr": ("log", 1e-4, 5e-3), "epochs": ("int", 1, 4), "extra.alpha": ("log", 0.1, 100.0),
            "extra.steering_coeff": ("log", 0.5, 20.0)},
    "mmunlearner": {"lr": ("log", 2e-4, 5e-3), "epochs": ("int", 1, 4), "extra.gamma": ("float", 0.5, 2.0)},
    "mip-editor": {"lr": ("log", 5e-4, 5e-3), "epochs": ("int", 1, 6), "extra.alpha": ("float", 0.2, 0.8)},
    "manu": {"extra.alpha": ("float", 0.2, 0.9)},
    "mllmeraser": {"extra.strength": ("float", 5.0, 40.0), "extra.retain_penalty": ("log", 10.0, 1e4)},
}


def search_space(method: str) -> Space:
    """The search space of ``method``; a clear error for a method without one."""
    if method not in SEARCH_SPACES:
        raise ValueError(f"no search space for method {method!r}; spaces exist for {', '.join(sorted(SEARCH_SPACES))} "
                         "(methods/search_spaces.py)")
    return SEARCH_SPACES[method]


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
    return replace(cfg, **flat, extra={**copy.deepcopy(cfg.extra), **extra})
