"""The knowledge check before unlearning, and CLEAR's gold model made by `finetune --retain-only`."""
import json

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval.knowledge import failure_message, forget_accuracy, knowledge_check
from mllm_unlearn.jobs.finetune import FinetuneJob, run_finetune
from mllm_unlearn.recipes import InjectionConfig
from mllm_unlearn.recipes.finetune import FinetuneConfig

from .conftest import SMALL_SIZE, SMALL_WORLD


def mllmu_figures(vqa: float, qa: float) -> dict:
    return {"figures": {"forget": {"vqa": {"mcq_accuracy": vqa, "mcq_count": 20}, "qa": {"mcq_accuracy": qa}},
                        "retain": {"vqa": {"mcq_accuracy": 90.0}}}}


def test_the_check_passes_only_clearly_above_chance_in_each_targeted_modality():
    passed = knowledge_check(mllmu_figures(80.0, 40.0), "mllmu", ("vqa", "qa"))
    assert passed["passed"] and passed["modalities"]["qa"]["threshold"] == 40.0  # chance 25 + 15 points
    failed = knowledge_check(mllmu_figures(80.0, 39.9), "mllmu", ("vqa", "qa"))
    assert failed["passed"] is False and failed["modalities"]["vqa"]["passed"] and not failed["modalities"]["qa"]["passed"]
    message = failure_message(failed)
    assert "QA classification accuracy 39.9% (chance 25.0%, threshold 40.0%)" in message and "VQA" not in message
    assert "--allow-unknown" in message and "--min-knowledge 15" in message and "mllm-unlearn finetune" in message
    # A method targeting images only is checked on images only; the threshold is an option.
    assert knowledge_check(mllmu_figures(80.0, 10.0), "mllmu", ("vqa",))["passed"]
    assert knowledge_check(mllmu_figures(80.0, 39.9), "mllmu", ("vqa", "qa"), min_knowledge=10)["passed"]
    allowed = knowledge_check(mllmu_figures(20.0, 20.0), "mllmu", ("vqa", "qa"), allow_unknown=True)
    assert allowed["passed"] is False and allowed["proceeded_without_knowledge"] and allowed["allow_unknown"]
    skipped = knowledge_check({"figures": {"forget": {"vqa": {"rougeL_f": 0.3}}}}, "mllmu", ("vqa", "qa"))
    assert skipped["passed"] is None and "mcq" in skipped["skipped"]


def test_clear_knowledge_is_the_answer_beating_every_perturbed_answer():
    predictions = [{"split": "forget", "modality": "vqa", "answer_nll": 1.0, "perturbed_nll": [2.0, 3.0, 1.5]},
                   {"split": "forget", "modality": "vqa", "answer_nll": 2.0, "perturbed_nll": [2.5, 1.9, 3.0]},
                   {"split": "forget_facerec", "modality": "vqa", "answer_nll": 0.1, "perturbed_nll": [0.2]},
                   {"split": "retain", "modality": "vqa", "answer_nll": 9.0, "perturbed_nll": [0.2]}]
    figures = forget_accuracy({"predictions": predictions}, "clear")
    assert figures["vqa"]["accuracy"] == pytest.approx(200 / 3) and figures["vqa"]["items"] == 3
    assert figures["vqa"]["chance"] == pytest.approx((25 + 25 + 50) / 3)


def test_run_stops_on_a_model_that_does_not_know_the_forget_people_and_allow_unknown_goes_on(tmp_path, tiny_vlm,
                                                                                              world_dir):
    checkpoint = tmp_path / "random-model"
    tiny_vlm("llava").save(checkpoint)  # never trained: knows nobody
    common = ["run", "--model", str(checkpoint), "--benchmark", str(world_dir), "--runs-dir", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--tasks", "mcq", "--no-mia",
              "--no-relearn", "--method", "ga", "--max-steps", "1"]
    result = CliRunner().invoke(app, [*common, "--name", "refused"])
    assert result.exit_code == 2, result.output
    assert "knowledge check: the vanilla model does not know the forget people" in result.output
    assert "chance 25.0%, threshold 40.0%" in result.output and "--allow-unknown" in result.output
    assert not (tmp_path / "runs" / "refused" / "edit").exists()  # nothing was unlearned

    result = CliRunner().invoke(app, [*common, "--name", "allowed", "--allow-unknown", "--min-knowledge", "20"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "allowed" / "results.json").read_text())
    check = saved["knowledge_check"]
    assert check["passed"] is False and check["proceeded_without_knowledge"] and check["min_knowledge"] == 20
    assert set(check["modalities"]) == {"vqa", "qa"} and check["modalities"]["qa"]["threshold"] == 45.0
    assert saved["config"]["allow_unknown"] is True and saved["config"]["min_knowledge"] == 20
    report = (tmp_path / "runs" / "allowed" / "report.md").read_text()
    knowledge = report.index("## The vanilla model's knowledge of the forget people")
    assert knowledge < report.index("Each cell: vanilla → unlearned") and "--allow-unknown" in report[knowledge:]
    html = (tmp_path / "runs" / "allowed" / "report.html").read_text()
    assert html.index("knowledge of the forget people") < html.index("<h2>Results</h2>")


def test_clear_on_a_users_model_uses_the_gold_model_made_by_finetune_retain_only(tmp_path):
    injection = InjectionConfig(skill_people=0, pretrain_epochs=1, finetune_epochs=1, learned_target=None)

    def make(out: str, retain_only: bool, forget: int = 10) -> str:
        run_finetune(FinetuneJob(out=str(tmp_path / out), benchmark="clear", size=SMALL_SIZE, world=SMALL_WORLD,
                                 forget_percent=forget, device="cpu", cache_dir=str(tmp_path / "cache"),
                                 finetune=FinetuneConfig(recipe="builtin", retain_only=retain_only, injection=injection,
                                                         progress=False)))
        return str(tmp_path / out)

    vanilla, gold = make("vanilla", False), make("gold", True)
    common = ["run", "--benchmark", "clear", "--model", vanilla, "--people", str(SMALL_WORLD.fictitious),
              "--real-people", str(SMALL_WORLD.real_world), "--method", "ga", "--max-steps", "2", "--tasks", "mcq", "--no-mia",
              "--no-relearn", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--quiet", "--allow-unknown"]
    result = CliRunner().invoke(app, [*common, "--name", "gold", "--gold-model", gold])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "gold" / "results.json").read_text())
    assert saved["config"]["gold_model_path"] == gold and "forget_quality" in saved["unlearned"]["summary"]
    assert saved["config"]["gold_model"]["made_by"] == "mllm-unlearn finetune --retain-only (recipe builtin)"
    assert "knowledge_check" in saved and saved["knowledge_check"]["method"].startswith("answer more likely")
    report = (tmp_path / "runs" / "gold" / "report.md").read_text()
    assert f"`{gold}` (mllm-unlearn finetune --retain-only (recipe builtin))" in report

    # A model fine-tuned on everyone, or one that left out another forget split, is no gold model.
    result = CliRunner().invoke(app, [*common, "--name", "not-gold", "--gold-model", vanilla])
    assert result.exit_code == 2 and "fine-tuned on every person" in result.output
    result = CliRunner().invoke(app, [*common, "--name", "other-split", "--gold-model", gold, "--forget", "5"])
    assert result.exit_code == 2 and "other forget people" in result.output


def test_npo_takes_a_retain_only_finetune_as_its_reference(tmp_path, world_dir):
    injection = InjectionConfig(skill_people=0, pretrain_epochs=1, finetune_epochs=1, learned_target=None)

    def make(out: str, retain_only: bool) -> str:
        run_finetune(FinetuneJob(out=str(tmp_path / out), benchmark=str(world_dir), size=SMALL_SIZE, device="cpu",
                                 cache_dir=str(tmp_path / "cache"),
                                 finetune=FinetuneConfig(recipe="builtin", retain_only=retain_only, injection=injection,
                                                         progress=False)))
        return str(tmp_path / out)

    vanilla, reference = make("vanilla", False), make("reference", True)
    common = ["run", "--benchmark", str(world_dir), "--model", vanilla, "--method", "npo", "--max-steps", "1",
              "--tasks", "mcq", "--no-mia", "--no-relearn", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--quiet", "--allow-unknown"]
    result = CliRunner().invoke(app, [*common, "--name", "npo", "-o", f"reference={reference}"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "runs" / "npo" / "results.json").read_text())["config"]
    assert config["method_config"]["extra"]["reference"] == reference == config["reference_model_path"]
    assert config["reference_model"]["made_by"] == "mllm-unlearn finetune --retain-only (recipe builtin)"
    result = CliRunner().invoke(app, [*common, "--name", "npo-bad", "-o", f"reference={vanilla}"])
    assert result.exit_code == 2 and "-o reference= " in result.output and "fine-tuned on every person" in result.output
