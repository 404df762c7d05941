"""The knowledge check before unlearning, and CLEAR's gold model made by `finetune --retain-only`."""
import json

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval.knowledge import failure_message, forget_accuracy, knowledge_check, names_person
from mllm_unlearn.jobs.finetune import FinetuneJob, run_finetune
from mllm_unlearn.recipes import InjectionConfig
from mllm_unlearn.recipes.finetune import FinetuneConfig

from .conftest import SMALL_SIZE, SMALL_WORLD


def mllmu_figures(vqa: float, qa: float, items: int = 20) -> dict:
    return {"figures": {"forget": {"vqa": {"mcq_accuracy": vqa, "mcq_count": items},
                                   "qa": {"mcq_accuracy": qa, "mcq_count": items}},
                        "retain": {"vqa": {"mcq_accuracy": 90.0}}}}


def test_the_check_passes_only_significantly_and_clearly_above_chance_in_each_targeted_modality():
    passed = knowledge_check(mllmu_figures(80.0, 45.0), "mllmu", ("vqa", "qa"))  # QA 9 of 20: p = 0.041
    assert passed["passed"] and passed["modalities"]["qa"]["threshold"] == 40.0  # chance 25 + 15 points
    assert passed["modalities"]["qa"]["right"] == 9 and passed["modalities"]["qa"]["p_value"] == pytest.approx(0.0409, abs=1e-4)
    failed = knowledge_check(mllmu_figures(80.0, 35.0), "mllmu", ("vqa", "qa"))
    assert failed["passed"] is False and failed["modalities"]["vqa"]["passed"] and not failed["modalities"]["qa"]["passed"]
    message = failure_message(failed)
    assert "QA classification accuracy 35.0% (7/20 items; chance 25.0%, threshold 40.0%)" in message and "VQA" not in message
    assert "not significantly above chance (binomial p = 0.214 > 0.05); below chance + 15 points" in message
    assert "--allow-unknown" in message and "--min-knowledge 15" in message and "mllm-unlearn finetune" in message
    # The case: 7 of 16 (43.8%) clears chance + 15 points but not the test (p = 0.080).
    small = knowledge_check(mllmu_figures(43.75, 90.0, items=16), "mllmu", ("vqa", "qa"))
    assert small["passed"] is False and small["modalities"]["vqa"]["reason"].startswith("7/16 right is not significantly")
    # --min-knowledge stays an effect size on top of the test: 40% of 400 items is significant, not 15 points up.
    large = knowledge_check(mllmu_figures(90.0, 35.0, items=400), "mllmu", ("vqa", "qa"))
    assert large["modalities"]["qa"]["p_value"] < 1e-5 and large["modalities"]["qa"]["reason"] == "below chance + 15 points"
    assert knowledge_check(mllmu_figures(90.0, 35.0, items=400), "mllmu", ("vqa", "qa"), min_knowledge=10)["passed"]
    # A method targeting images only is checked on images only.
    assert knowledge_check(mllmu_figures(80.0, 10.0), "mllmu", ("vqa",))["passed"]
    allowed = knowledge_check(mllmu_figures(20.0, 20.0), "mllmu", ("vqa", "qa"), allow_unknown=True)
    assert allowed["passed"] is False and allowed["proceeded_without_knowledge"] and allowed["allow_unknown"]
    skipped = knowledge_check({"figures": {"forget": {"vqa": {"rougeL_f": 0.3}}}}, "mllmu", ("vqa", "qa"))
    assert skipped["passed"] is None and "mcq" in skipped["skipped"]
    no_count = knowledge_check({"figures": {"forget": {"vqa": {"mcq_accuracy": 95.0}}}}, "mllmu", ("vqa",))
    assert no_count["passed"] is False and no_count["modalities"]["vqa"]["reason"] == "no item count to test against chance"


def test_clear_knowledge_is_the_answer_beating_every_perturbed_answer():
    predictions = [{"split": "forget", "modality": "vqa", "answer_nll": 1.0, "perturbed_nll": [2.0, 3.0, 1.5]},
                   {"split": "forget", "modality": "vqa", "answer_nll": 2.0, "perturbed_nll": [2.5, 1.9, 3.0]},
                   {"split": "forget_facerec", "modality": "vqa", "answer_nll": 0.1, "perturbed_nll": [0.2]},
                   {"split": "retain", "modality": "vqa", "answer_nll": 9.0, "perturbed_nll": [0.2]}]
    figures = forget_accuracy({"predictions": predictions}, "clear")
    assert figures["vqa"]["accuracy"] == pytest.approx(200 / 3) and figures["vqa"]["items"] == 3
    assert figures["vqa"]["chance"] == pytest.approx((25 + 25 + 50) / 3)
    assert figures["vqa"]["tasks"] == {"forget": {"right": 1, "items": 2}, "forget_facerec": {"right": 1, "items": 1}}


def test_clear_face_recognition_counts_only_when_the_generation_names_the_person():
    """The issue's case: the right name scores above every perturbed name in 6 of 6 forget face-recognition
    items, but the model's own generation names someone else: it does not recognise them (0%, not 100%)."""
    def item(prediction, name="Ann O'Rourke"):
        return {"split": "forget_facerec", "modality": "vqa", "answer": name, "answer_nll": 0.5,
                "perturbed_nll": [1.0, 2.0], "prediction": prediction}

    wrong = [item("The name of the person is Bo Li.") for _ in range(6)]
    assert forget_accuracy({"predictions": wrong}, "clear")["vqa"]["accuracy"] == 0.0
    check = knowledge_check({"predictions": wrong}, "clear", ("vqa",))
    assert check["passed"] is False and check["modalities"]["vqa"]["tasks"]["forget_facerec"] == {"right": 0, "items": 6}
    assert names_person("ann o ' rourke.", "Ann O'Rourke") and names_person("Ann O'Rourke", "Ann O'Rourke")
    assert not names_person("Annabel O'Rourke", "Ann O'Rourke") and not names_person("", "Ann")
    right = [item("Ann O ' Rourke") for _ in range(6)]
    assert forget_accuracy({"predictions": right}, "clear")["vqa"]["accuracy"] == 100.0
    # Without generations (ROUGE off) the likelihood alone decides, as for the caption items.
    unscored = [{k: v for k, v in r.items() if k != "prediction"} for r in wrong]
    assert forget_accuracy({"predictions": unscored}, "clear")["vqa"]["accuracy"] == 100.0


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
    # The run folder keeps what was measured: the vanilla figures, the check and its reason, stages not run.
    assert "Recorded in" in result.output and "Fine-tune the model on the benchmark first" in result.output
    saved = json.loads((tmp_path / "runs" / "refused" / "results.json").read_text())
    assert saved["knowledge_check"]["passed"] is False and saved["vanilla"]["figures"]["forget"]["vqa"]["mcq_count"] > 0
    assert saved["stopped"]["stage"] == "knowledge check" and "does not know the forget people" in saved["stopped"]["reason"]
    assert saved["unlearned"]["skipped"].startswith("unlearning did not run")
    assert saved["robustness"]["mia"]["skipped"].startswith("unlearning did not run")
    assert saved["config"]["method"] == "ga" and "knowledge check" in saved["cost"]["wall_time_s"]
    report = (tmp_path / "runs" / "refused" / "report.md").read_text()
    assert "**Stopped at the knowledge check" in report and "## The vanilla model's knowledge of the forget people" in report
    assert "Stopped at the knowledge check" in (tmp_path / "runs" / "refused" / "report.html").read_text()

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


def test_the_advice_of_a_failed_check_fits_how_the_model_was_made(tmp_path):
    from mllm_unlearn.jobs import RunConfig
    from mllm_unlearn.jobs.stopped import knowledge_advice

    built = knowledge_advice(RunConfig(), str(tmp_path / "cache" / "vanilla"))
    assert "trained by this tool" in built and "injection.json" in built and "--inject-epochs" in built
    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    (finetuned / "finetune.json").write_text(json.dumps({"recipe": {"name": "mllmu", "epochs": 5}, "steps": 40,
                                                         "base_model": "/models/llava"}))
    advice = knowledge_advice(RunConfig(model=str(finetuned)), str(finetuned))
    assert "is an `mllm-unlearn finetune` output (recipe mllmu, 5 epochs, 40 steps)" in advice
    assert "mllm-unlearn finetune --model /models/llava --recipe mllmu --epochs 10" in advice
    plain = tmp_path / "plain"
    plain.mkdir()
    assert knowledge_advice(RunConfig(model=str(plain)), str(plain)).startswith("Fine-tune the model on the benchmark first")


def test_a_gold_model_of_other_forget_people_is_refused_naming_them(tmp_path):
    from types import SimpleNamespace

    from mllm_unlearn.jobs.prepare import check_gold_model

    gold = tmp_path / "gold"
    gold.mkdir()
    (gold / "finetune.json").write_text(json.dumps({"retain_only": True, "forget_ids": ["001", "002", "009"]}))
    benchmark = SimpleNamespace(forget_ids=["001", "002", "003"])
    with pytest.raises(ValueError) as error:
        check_gold_model(str(gold), benchmark, option="-o reference=")
    message = str(error.value)
    assert message.startswith(f"-o reference={gold} left out other forget people")
    assert "trained on this run's forget people 003" in message
    assert "left out 009, who are not in this run's forget split" in message
    with pytest.raises(ValueError, match=f"^--gold-model {gold} left out"):
        check_gold_model(str(gold), benchmark)
    check_gold_model(str(gold), SimpleNamespace(forget_ids=["009", "001", "002"]))  # the same people: accepted


def test_clear_on_a_users_model_uses_the_gold_model_made_by_finetune_retain_only(tmp_path):
    injection = InjectionConfig(skill_people=0, pretrain_epochs=1, finetune_epochs=1, learned_target=None)

    def make(out: str, retain_only: bool, forget: int = 10) -> str:
        run_finetune(FinetuneJob(out=str(tmp_path / out), benchmark="clear", size=SMALL_SIZE, world=SMALL_WORLD,
                                 forget_percent=forget, device="cpu", cache_dir=str(tmp_path / "cache"),
                                 finetune=FinetuneConfig(recipe="builtin", retain_only=retain_only, injection=injection,
                                                         progress=False)))
        knowledge = json.loads((tmp_path / out / "finetune.json").read_text())["knowledge"]
        assert {"forget", "retain", "real_world"} <= set(knowledge), knowledge  # CLEAR's knowledge summary
        assert knowledge["forget"]["vqa"]["items"] > 0 and 0 <= knowledge["forget"]["vqa"]["p_value"] <= 1
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
    assert result.exit_code == 2 and "fine-tuned on every person" in result.output
    assert f"-o reference={vanilla} was" in " ".join(result.output.split())  # no stray space after "="
