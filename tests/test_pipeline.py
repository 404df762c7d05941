"""The whole job through the Python API and the CLI, on a small world."""
import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval import EvalConfig
from mllm_unlearn.interventions import load_edit
from mllm_unlearn.methods import MethodConfig
from mllm_unlearn.pipeline import RunConfig, run_pipeline
from mllm_unlearn.training import InjectionConfig

from .conftest import SMALL_SIZE, SMALL_WORLD


def small_run(tmp_path, cache: str, name: str = "r") -> RunConfig:
    return RunConfig(
        name=name, world=SMALL_WORLD, size=SMALL_SIZE, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / cache),
        injection=InjectionConfig(pretrain_epochs=2, finetune_epochs=3, skill_max_steps=10), device="cpu",
        method_cfg=MethodConfig(max_steps=3, batch_size=8, progress=False),
        eval=EvalConfig(max_items_per_group=6, max_new_tokens=6, progress=False), progress=False,
    )


def test_same_seed_gives_identical_figures_and_cache_skips_injection(tmp_path):
    first = run_pipeline(small_run(tmp_path, "cache_a", "a"))
    second = run_pipeline(small_run(tmp_path, "cache_b", "b"))  # separate cache: trains again from scratch
    assert "knowledge injection" in first["cost"]["wall_time_s"]
    assert first["vanilla"]["figures"] == second["vanilla"]["figures"]
    assert first["unlearned"]["figures"] == second["unlearned"]["figures"]
    assert first["vanilla"]["predictions"] == second["vanilla"]["predictions"]

    again = run_pipeline(small_run(tmp_path, "cache_a", "c"))  # same cache: the vanilla model is reused
    assert "knowledge injection" not in again["cost"]["wall_time_s"]
    assert "load vanilla model" in again["cost"]["wall_time_s"]
    assert again["vanilla"]["figures"] == first["vanilla"]["figures"]

    run_dir = tmp_path / "runs" / "a"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["config"]["versions"]["transformers"]
    assert saved["unlearned"]["predictions"] and "image_swap" in saved["vanilla"]["diagnostics"]
    report = (run_dir / "report.md").read_text()
    assert "| Forget | VQA (image + text) |" in report and "→" in report
    assert (run_dir / "edit" / "weights.safetensors").is_file()


def test_cli_rejects_unknown_method_clearly(tmp_path):
    result = CliRunner().invoke(app, ["run", "--method", "nope", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output


def test_cli_lists_methods():
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0 and "ga" in result.output and "graddiff" in result.output


def test_unknown_family_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        run_pipeline(replace(small_run(tmp_path, "c"), family="gpt"))


@pytest.mark.parametrize("method,extra", [("kl", {}), ("npo", {"beta": 0.2}), ("rmu", {"layer": 1}),
                                          ("mmunlearner", {"mask": "both"})])
def test_every_gradient_method_runs_through_the_pipeline(tmp_path_factory, method, extra):
    base = tmp_path_factory.getbasetemp()  # one vanilla cache shared by the three runs
    cfg = small_run(base, "cache_methods", method)
    cfg = replace(cfg, method=method, method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    results = run_pipeline(cfg)
    assert results["edit"]["steps"] == 3 and results["config"]["method_config"]["extra"] == extra
    assert (base / "runs" / method / "report.md").is_file()


def test_cli_rejects_unknown_method_option_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["run", "--method", "npo", "-o", "betta=1", "--runs-dir", str(tmp_path / "runs"),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "unknown option(s) betta" in result.output
    assert not (tmp_path / "cache").exists()  # failed before generating or training anything


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_mllmeraser_runs_through_the_pipeline(tmp_path_factory, family):
    base = tmp_path_factory.getbasetemp()
    cfg = small_run(base, "cache_methods" if family == "llava" else "cache_qwen25", f"mllmeraser-{family}")
    extra = {"layers": "all", "pgd_steps": 1, "max_retain": 200}
    cfg = replace(cfg, family=family, method="mllmeraser", method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    results = run_pipeline(cfg)
    assert results["edit"]["kind"] == "steering" and results["cost"]["changed_parameters"] == 0
    edit = load_edit(base / "runs" / f"mllmeraser-{family}" / "edit")
    assert edit.layers == [1] and edit.meta["counts"]["retain_prompts"] > 0
    # The pipeline passed the real-world people's training data as retain data too (uses_prior_knowledge).
    assert edit.meta["retain_splits"] == ["finetune", "pretrain"]
