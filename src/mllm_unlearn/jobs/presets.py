"""Which hyperparameters a run uses: the method's preset for the model (``tiny`` for a model this
tool built, ``paper`` otherwise), a preset file's values (``--preset``, e.g. a sweep's choice) on
top, and the run's own options over both."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..methods import MethodConfig
from ..methods.defaults import apply_overrides, method_preset, preset_name_for, swept_choice_family
from ..methods.search_spaces import apply_values
from ..recipes.inject import INJECTION_META
from .config import RunConfig

PRESET_FORMAT = "mllm-unlearn preset"


def load_preset(path: str | Path) -> dict[str, Any]:
    """A preset file written by ``mllm-unlearn sweep`` (or by hand: ``method`` and ``values``)."""
    path = Path(path)
    try:
        preset = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--preset {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"--preset {path}: not valid JSON ({error})") from error
    if not isinstance(preset, dict) or not isinstance(preset.get("method"), str) or \
            not isinstance(preset.get("values"), dict):
        raise ValueError(f"--preset {path}: expected a JSON object with 'method' (a name) and 'values' (an object of "
                         "method options, e.g. {\"lr\": 0.001, \"extra\": {\"alpha\": 0.5}})")
    return {**preset, "path": str(path)}


def preset_record(preset: dict[str, Any]) -> dict[str, Any]:
    """What results.json records of the preset a run used."""
    return {key: preset.get(key) for key in ("path", "method", "values", "validation", "chosen_by", "model", "benchmark")}


def model_built_here(cfg: RunConfig) -> bool:
    """Whether this tool built the run's model: trained in this run (no ``--model``) or a
    checkpoint it saved (``injection.json`` beside the weights). Picks presets and the attack's mode."""
    return cfg.model is None or (Path(cfg.model) / INJECTION_META).is_file()


def model_family_for_presets(cfg: RunConfig) -> str:
    """The tiny model's family, which picks its own sweep-chosen preset values where derived: the
    family a checkpoint this tool built recorded (``injection.json``), else the run's ``family``."""
    if cfg.model is not None:
        try:
            recorded = json.loads((Path(cfg.model) / INJECTION_META).read_text()).get("family")
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, str):
            return recorded
    return cfg.family


def preset_choice_family(cfg: RunConfig) -> str | None:
    """Which family's sweeps chose the run's tiny-preset values (``methods/tiny_presets.json``)."""
    return swept_choice_family(cfg.method, model_family_for_presets(cfg))


def resolve_method_config(cfg: RunConfig) -> tuple[MethodConfig, str]:
    """The method's settings and where they came from: ``given`` (``cfg.method_cfg`` set), else
    the preset for the model (``tiny``/``paper``), then a ``--preset`` file's values
    (``cfg.preset``), with ``cfg.method_overrides`` on top."""
    if cfg.method_cfg is not None:
        return apply_overrides(cfg.method_cfg, cfg.method_overrides), "given"
    preset = preset_name_for(model_built_here(cfg))
    method_cfg = method_preset(cfg.method, preset, seed=cfg.seed, family=model_family_for_presets(cfg))
    if cfg.preset is not None:  # a preset file's values (a sweep's choice) on top of the model's preset
        method_cfg = apply_values(method_cfg, cfg.preset["values"], source=f"--preset {cfg.preset.get('path')}")
    return apply_overrides(method_cfg, cfg.method_overrides), preset
