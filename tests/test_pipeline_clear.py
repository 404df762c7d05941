"""The whole job on CLEAR: built-in world in CLEAR's layout, vanilla and gold models (cached),
CLEAR's metrics before and after unlearning, offline, on tiny LLaVA and Qwen2.5-VL."""
import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval import EvalConfig
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.methods import MethodConfig
from mllm_unlearn.models import load_vlm
from mllm_unlearn.recipes import InjectionConfig

from .conftest import SMALL_SIZE, SMALL_WORLD

TASKS = {"forget", "forget_facerec", "retain", "retain_facerec", "real_faces", "real_world"}


def clear_run(tmp_path, family: str, name: str) -> RunConfig:
    return RunConfig(
        name=name, family=family, benchmark="clear", world=SMALL_WORLD, size=SMALL_SIZE, method="ga",
        runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), device="cpu",
        injection=InjectionConfig(pretrain_epochs=2, finetune_epochs=3),
        method_cfg=MethodConfig(max_steps=3, batch_size=8, progress=False),
        eval=EvalConfig(max_items_per_group=4, max_new_tokens=4, progress=False), progress=False,
        allow_unknown=True,  # a few injection epochs: the model need not know the forget people yet
    )


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_clear_pipeline_end_to_end_with_cached_gold_model(tmp_path, family):
    results = run_pipeline(clear_run(tmp_path, family, "a"))
    timings = results["cost"]["wall_time_s"]
    assert "knowledge injection" in timings and "train gold model (retain only)" in timings
    assert results["protocol"] == "clear"
    for stage in ("vanilla", "unlearned", "gold"):
        figures = results[stage]["figures"]
        assert set(figures) == TASKS
        assert all({"prob", "truth_ratio", "rougeL_recall"} <= set(cell) for f in figures.values() for cell in f.values())
        assert 0.0 <= results[stage]["summary"]["model_utility"] <= 1.0
    for stage in ("vanilla", "unlearned"):
        assert 0.0 <= results[stage]["summary"]["forget_quality"] <= 1.0

    # The gold model: same tokenizer as the vanilla model, trained without the forget people.
    gold_path = results["config"]["gold_model_path"]
    meta = json.loads((tmp_path / "cache" / "retain" / gold_path.split("/")[-1] / "injection.json").read_text())
    assert meta["retain_only"] is True and meta["forget_ids"] and "/retain/" in gold_path
    vanilla_vocab = load_vlm(results["config"]["model_path"]).processor.tokenizer.get_vocab()
    assert load_vlm(gold_path).processor.tokenizer.get_vocab() == vanilla_vocab

    report = (tmp_path / "runs" / "a" / "report.md").read_text()
    assert "| Forget (captions) | VQA (image + text) |" in report and "Forget quality" in report

    again = run_pipeline(clear_run(tmp_path, family, "b"))  # both models come from the cache
    timings = again["cost"]["wall_time_s"]
    assert "load vanilla model" in timings and "load gold model" in timings
    assert again["gold"]["figures"] == results["gold"]["figures"]
    assert again["unlearned"]["summary"] == pytest.approx(results["unlearned"]["summary"])

    # The first run's edit, given instead of unlearning, measures the same on CLEAR's protocol.
    given = run_pipeline(replace(clear_run(tmp_path, family, "c"), edit=str(tmp_path / "runs" / "a" / "edit")))
    assert "load edit" in given["cost"]["wall_time_s"] and given["config"]["edit_source"].endswith("/runs/a/edit")
    assert given["unlearned"]["summary"] == pytest.approx(results["unlearned"]["summary"])
    assert "Edit given, not trained by this run" in (tmp_path / "runs" / "c" / "report.md").read_text()


def test_cli_runs_clear_builtin_and_detects_a_clear_directory(tmp_path):
    common = ["--people", "20", "--real-people", "4", "--method", "ga", "--max-steps", "2", "--tasks", "mcq",
              "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--allow-unknown"]
    result = CliRunner().invoke(app, ["run", "--benchmark", "clear", "--name", "builtin", "--inject-epochs", "1",
                                      "--pretrain-epochs", "1", *common])
    assert result.exit_code == 0, result.output
    assert "CLEAR protocol" in result.output and "Model utility" in result.output
    saved = json.loads((tmp_path / "runs" / "builtin" / "results.json").read_text())
    assert saved["protocol"] == "clear" and "forget_quality" in saved["unlearned"]["summary"]
    vanilla, gold = saved["config"]["model_path"], saved["config"]["gold_model_path"]

    # The generated directory, passed as a path, is detected as CLEAR; given checkpoints skip training.
    clear_dir = next((tmp_path / "cache" / "benchmarks").glob("clear-*"))
    result = CliRunner().invoke(app, ["run", "--benchmark", str(clear_dir), "--forget", "5", "--name", "dir",
                                      "--model", vanilla, "--gold-model", gold, *common])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "dir" / "results.json").read_text())
    assert saved["protocol"] == "clear" and saved["config"]["benchmark_name"].endswith("forget05")
    assert saved["config"]["gold_model_path"] == gold and "knowledge injection" not in saved["cost"]["wall_time_s"]
    assert "forget_quality" in saved["unlearned"]["summary"]

    # A user's checkpoint without a gold checkpoint: everything but forget quality.
    result = CliRunner().invoke(app, ["run", "--benchmark", str(clear_dir), "--name", "nogold", "--model", vanilla, *common])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "nogold" / "results.json").read_text())
    assert saved["gold"] is None and "forget_quality" not in saved["unlearned"]["summary"]
    assert "forget quality is not computed" in result.output


def test_cli_names_a_bad_clear_split(tmp_path):
    result = CliRunner().invoke(app, ["run", "--benchmark", "clear", "--forget", "15", "--people", "20",
                                      "--real-people", "4", "--runs-dir", str(tmp_path / "runs"),
                                      "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 2 and "forget percent must be 1, 5 or 10" in result.output
