"""The package's layers hold (docs/architecture.md#layers), the guard catches an import that breaks
them, and the 0.2 module names still import (deprecated) for one release."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts (pyproject.toml) on the package under ``src``."""
    shutil.copy(ROOT / "pyproject.toml", cwd / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A copy of src/ whose modules a test may edit."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "src" / "mllm_unlearn", src / "mllm_unlearn",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return src


def test_the_package_keeps_its_layers_and_has_no_cycles(tmp_path):
    result = lint_imports(ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def lint_with_back_import(package: Path, cwd: Path, module: str, statement: str) -> subprocess.CompletedProcess:
    """``lint-imports`` on ``package`` with ``statement`` imported inside a function of ``module`` (the
    kind of import that hid the 0.2 cycles), the module restored afterwards."""
    path = package / "mllm_unlearn" / Path(*module.split(".")).with_suffix(".py")
    original = path.read_text()
    path.write_text(original + f"\n\ndef _back_import():\n    {statement}\n")
    try:
        return lint_imports(package, cwd)
    finally:
        path.write_text(original)


def test_an_import_from_a_higher_layer_breaks_the_contract(package_copy, tmp_path):
    result = lint_with_back_import(package_copy, tmp_path, "data.items", "from ..jobs.run import run_pipeline")
    assert result.returncode != 0
    assert "Layers: each layer imports only from the layers below it BROKEN" in result.stdout
    assert "mllm_unlearn.data.items -> mllm_unlearn.jobs.run" in result.stdout


def test_a_cycle_inside_a_package_breaks_the_contract(package_copy, tmp_path):
    """data.layouts is below data.synthetic; an import back would close a cycle."""
    result = lint_with_back_import(package_copy, tmp_path, "data.layouts", "from .synthetic import generate_world")
    assert result.returncode != 0
    assert "No import cycles between the modules of any package BROKEN" in result.stdout


@pytest.mark.parametrize(("old_module", "name", "new_module"), [
    ("mllm_unlearn.pipeline", "RunConfig", "mllm_unlearn.jobs.config"),
    ("mllm_unlearn.pipeline", "export_unlearned_model", "mllm_unlearn.jobs.export"),
    ("mllm_unlearn.pipeline", "stage_failure", "mllm_unlearn.eval.stages"),
    ("mllm_unlearn.sweep", "load_preset", "mllm_unlearn.jobs.presets"),
    ("mllm_unlearn.sweep", "carve_out_validation", "mllm_unlearn.data.validation"),
    ("mllm_unlearn.sequence", "run_sequence", "mllm_unlearn.jobs.sequence"),
    ("mllm_unlearn.shipped", "install_shipped", "mllm_unlearn.recipes.shipped"),
    ("mllm_unlearn.training.inject", "InjectionConfig", "mllm_unlearn.recipes.inject"),
    ("mllm_unlearn.training.inject", "McqRenderer", "mllm_unlearn.data.prompts"),
    ("mllm_unlearn.training.finetune", "run_finetune", "mllm_unlearn.jobs.finetune"),
    ("mllm_unlearn.training", "FinetuneConfig", "mllm_unlearn.recipes.finetune"),
    ("mllm_unlearn.training.finetune", "training_items", "mllm_unlearn.recipes.finetune:finetune_items"),
])
def test_the_0_2_module_names_still_import_and_warn(old_module, name, new_module):
    import importlib

    old = importlib.import_module(old_module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(old, name)
    new_module, _, new_name = new_module.partition(":")
    assert value is getattr(importlib.import_module(new_module), new_name or name)
    assert any(issubclass(w.category, DeprecationWarning) and f"{new_module}.{new_name or name}" in str(w.message)
               for w in caught)
    with pytest.raises(AttributeError):
        _ = old.no_such_name


def test_the_readme_api_names_import_from_the_top_level():
    import mllm_unlearn

    for name in mllm_unlearn.__all__:
        assert getattr(mllm_unlearn, name) is not None, name
