"""Robustness stages that cannot lose a run, and hyperparameter presets chosen by model."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.jobs.attack import STAGE_PENDING
from mllm_unlearn.jobs.run import run_pipeline

from .test_pipeline import small_run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder (and so one cached vanilla model) for this module's pipeline runs."""
    return tmp_path_factory.mktemp("robust")


def test_an_attack_out_of_memory_leaves_a_complete_results_json_and_the_run_goes_on(shared, monkeypatch):
    tmp_path = shared
    import mllm_unlearn.eval.relearn as relearn
    import mllm_unlearn.jobs.attack as pipeline

    run_dir = tmp_path / "runs" / "oom"
    seen_before_mia = {}
    real_mia = pipeline.membership_inference

    def mia_reading_results_first(*args, **kwargs):
        # results.json is on disk before the robustness stages, each marked pending
        if not seen_before_mia:
            seen_before_mia.update(json.loads((run_dir / "results.json").read_text()))
        return real_mia(*args, **kwargs)

    def out_of_memory(model, batch):  # the attack's first training step runs out of memory
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    monkeypatch.setattr(pipeline, "membership_inference", mia_reading_results_first)
    monkeypatch.setattr(relearn, "sequence_nll", out_of_memory)
    # No method_cfg: the preset for the model (tiny: this run builds it), with the overrides on top.
    cfg = replace(small_run(tmp_path, "cache", "oom"), method_cfg=None,
                  method_overrides={"max_steps": 3, "batch_size": 8, "progress": False})
    results = run_pipeline(cfg)

    assert seen_before_mia["robustness"] == {"mia": {"pending": STAGE_PENDING}, "relearn": {"pending": STAGE_PENDING}}
    assert seen_before_mia["unlearned"]["figures"] and seen_before_mia["failures"] == []

    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results, default=str))
    failure = saved["robustness"]["relearn"]["failed"]
    assert failure["stage"] == "relearning attack" and failure["error"] == "OutOfMemoryError"
    assert "Tried to allocate 20.00 GiB" in failure["message"] and "out_of_memory" in failure["traceback"]
    assert saved["failures"] == [failure]
    assert set(saved["robustness"]["mia"]) == {"vanilla", "unlearned"}  # the stage before it is kept
    assert saved["unlearned"]["figures"] and saved["vanilla"]["figures"] and "relearning attack" in saved["cost"]["wall_time_s"]
    assert saved["config"]["preset"] == "tiny" and saved["config"]["model_built_here"] is True
    from mllm_unlearn.methods.defaults import method_preset

    assert saved["config"]["method_config"]["lr"] == method_preset("ga", "tiny").lr  # the tiny preset's
    assert saved["config"]["method_config"]["max_steps"] == 3
    assert saved["config"]["relearn"]["lora"] is None and saved["config"]["relearn"]["lr"] == 1e-3

    report = (run_dir / "report.md").read_text()
    assert "Failed: OutOfMemoryError: CUDA out of memory" in report and "**Failed stages**" in report
    assert "## Membership inference" in report and "| loss |" in report
    assert "Hyperparameters: **tiny** preset" in report
    assert saved["config"]["preset_family"] == "llava"  # GA's searched values: chosen on the tiny LLaVA
    assert "searched values chosen on the tiny llava model's validation people" in report
    assert "Failed: OutOfMemoryError" in (run_dir / "report.html").read_text()
    (run_dir / "report.md").unlink()
    rendered = CliRunner().invoke(app, ["report", str(run_dir)])
    assert rendered.exit_code == 0, rendered.output
    assert "Failed: OutOfMemoryError" in (run_dir / "report.md").read_text()
    compared = CliRunner().invoke(app, ["compare", str(run_dir), "--out", str(tmp_path / "compare")])
    assert compared.exit_code == 0, compared.output


def test_a_failing_membership_inference_does_not_stop_the_attack(shared, monkeypatch):
    tmp_path = shared
    import mllm_unlearn.jobs.attack as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(pipeline, "membership_inference", broken)
    results = run_pipeline(replace(small_run(tmp_path, "cache", "mia")))
    assert results["robustness"]["mia"]["failed"]["error"] == "RuntimeError"
    assert results["robustness"]["relearn"]["steps"] == [0, 1, 2]
    assert results["config"]["preset"] == "given"


def test_a_model_this_tool_did_not_build_gets_the_paper_presets_and_a_lora_attack(tmp_path, tiny_vlm, world_dir):
    checkpoint = tmp_path / "user-model"
    tiny_vlm("llava").save(checkpoint)  # no injection.json: not built by this tool
    common = ["run", "--model", str(checkpoint), "--benchmark", str(world_dir), "--runs-dir", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--tasks", "mcq", "--no-mia",
              "--relearn-steps", "2", "--max-steps", "1", "--allow-unknown",  # a random model knows nobody
              "--attacks", "none"]  # the battery has its own tests (test_pipeline_attacks.py)
    result = CliRunner().invoke(app, [*common, "--name", "ga", "--method", "ga", "--lr", "3e-5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "ga" / "results.json").read_text())
    config = saved["config"]
    assert config["preset"] == "paper" and config["model_built_here"] is False
    assert config["method_config"]["lr"] == 3e-5  # --lr wins over the preset
    assert config["method_config"]["batch_size"] == 4 and config["method_config"]["epochs"] == 1  # the paper's
    assert config["relearn"]["lora"]["r"] == 16 and config["relearn"]["lr"] == 1e-4  # LoRA attack by default
    assert saved["robustness"]["relearn"]["fine_tuning"] == "LoRA rank 16"
    assert "Hyperparameters: **paper** preset" in (tmp_path / "runs" / "ga" / "report.md").read_text()

    # MIP-Editor takes its PAPER_7B_PRESET; -o still wins key by key; the attack mode as asked.
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.presets import resolve_method_config
    from mllm_unlearn.methods.mip_editor import PAPER_7B_PRESET

    cfg = RunConfig(model=str(checkpoint), method="mip-editor", method_cfg=None,
                    method_overrides={"extra": {"layer": 1}})
    method_cfg, preset = resolve_method_config(cfg)
    assert preset == "paper" and method_cfg.lr == PAPER_7B_PRESET["lr"] == 2e-5 and method_cfg.batch_size == 4
    assert method_cfg.extra == {**PAPER_7B_PRESET["extra"], "layer": 1}
    result = CliRunner().invoke(app, [*common, "--name", "full", "--relearn-lora", "off", "--relearn-lr", "2e-3"])
    assert result.exit_code == 0, result.output
    relearn = json.loads((tmp_path / "runs" / "full" / "results.json").read_text())["config"]["relearn"]
    assert relearn["lora"] is None and relearn["lr"] == 2e-3
    bad = CliRunner().invoke(app, [*common, "--name", "bad", "--relearn-lora", "big"])
    assert bad.exit_code == 2 and "--relearn-lora 'big'" in bad.output


def test_presets_by_model():
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.presets import resolve_method_config
    from mllm_unlearn.methods import available_methods
    from mllm_unlearn.methods.defaults import PAPER_DEFAULTS, TINY_DEFAULTS, method_preset, swept_tiny_values

    assert set(PAPER_DEFAULTS) == set(available_methods())  # every method has the papers' settings
    tiny_manu_alpha = swept_tiny_values().get("manu", {}).get("extra", {}).get("alpha", TINY_DEFAULTS["manu"]["extra"]["alpha"])
    assert method_preset("manu", "paper").extra["alpha"] == 0.02 and method_preset("manu", "tiny").extra["alpha"] == tiny_manu_alpha
    eraser = method_preset("mllmeraser", "paper").extra
    assert eraser["strength"] == 0.2 and eraser["layers"] == "all" and "lift" not in eraser
    assert method_preset("ga", "tiny").lr == swept_tiny_values().get("ga", TINY_DEFAULTS["ga"])["lr"]
    # Built in this run (no --model): the tiny preset; the user's -o merges into its options.
    cfg, preset = resolve_method_config(RunConfig(method="npo", method_cfg=None,
                                                  method_overrides={"extra": {"beta": 0.2}, "lr": 1e-4}))
    assert preset == "tiny" and cfg.extra == {"beta": 0.2, "reference": "vanilla"} and cfg.lr == 1e-4
