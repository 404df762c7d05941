"""mllm-unlearn finetune: recipes as recorded, the builtin recipe equal to the knowledge injection,
the retain-only gold model, resumable fine-tunes, clear errors."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval import EvalConfig, Evaluator
from mllm_unlearn.eval.knowledge import knowledge_check
from mllm_unlearn.eval.mia import sample_scores
from mllm_unlearn.jobs.finetune import FinetuneJob, run_finetune, state_dir_of
from mllm_unlearn.models import load_vlm
from mllm_unlearn.recipes import InjectionConfig
from mllm_unlearn.recipes.finetune import FINETUNE_META, FinetuneConfig, resolve_recipe
from mllm_unlearn.training.loop import TrainingPaused

from ..conftest import SMALL_SIZE, SMALL_WORLD, weights_hash

# A very small curriculum: every stage runs (skill, pretrain, finetune with replay, learned checks).
TINY_INJECTION = InjectionConfig(skill_people=2, skill_max_steps=6, skill_check_every=3, pretrain_epochs=1,
                                 finetune_epochs=2, learned_check_every=5, learned_probe=4)


def job(tmp_path, out: str, world_dir=None, **finetune_options) -> FinetuneJob:
    return FinetuneJob(out=str(tmp_path / out), benchmark=str(world_dir) if world_dir else None, size=SMALL_SIZE,
                       world=SMALL_WORLD, device="cpu", cache_dir=str(tmp_path / "cache"),
                       finetune=FinetuneConfig(progress=False, **finetune_options))


def test_each_recipe_is_recorded_in_finetune_json_as_published(tmp_path, world_dir):
    mllmu = run_finetune(job(tmp_path, "mllmu", world_dir, recipe="mllmu", max_steps=2))
    clear = run_finetune(job(tmp_path, "clear", world_dir, recipe="clear", max_steps=2, loss_on="prompt+answer"))
    for name, meta in (("mllmu", mllmu), ("clear", clear)):
        saved = json.loads((tmp_path / name / FINETUNE_META).read_text())
        assert saved["recipe"] == json.loads(json.dumps(meta["recipe"])) and saved["steps"] == 2
        assert len(saved["loss_curve"]) == 2 and saved["output"] == "checkpoint"
        assert saved["versions"]["torch"] == torch.__version__ and saved["config_hash"]
        assert saved["data"]["items"] > 0 and saved["data"]["hash"]
    recipe = json.loads((tmp_path / "mllmu" / FINETUNE_META).read_text())["recipe"]
    assert (recipe["lr"], recipe["epochs"], recipe["batch_size"], recipe["grad_accumulation"]) == (2e-5, 5, 4, 1)
    assert (recipe["lora"]["r"], recipe["lora"]["alpha"], recipe["lora"]["dropout"]) == (16, 16, 0.05)
    assert recipe["schedule"] == "linear" and recipe["warmup_ratio"] == 0 and recipe["loss_on"] == "answer"
    recipe = json.loads((tmp_path / "clear" / FINETUNE_META).read_text())["recipe"]
    assert (recipe["lr"], recipe["epochs"], recipe["batch_size"], recipe["grad_accumulation"]) == (1e-5, 3, 4, 2)
    assert (recipe["lora"]["r"], recipe["lora"]["alpha"], recipe["lora"]["dropout"]) == (8, 32, 0.0)
    assert recipe["weight_decay"] == 0.01 and recipe["warmup_epochs"] == 1.0 and recipe["loss_on"] == "prompt+answer"
    # The merged checkpoint loads as an ordinary model, and as one this tool built (a tiny base).
    assert (tmp_path / "mllmu" / "injection.json").is_file()
    load_vlm(tmp_path / "mllmu", "cpu")
    # The builtin recipe records the injection curriculum it ran.
    builtin = resolve_recipe(FinetuneConfig(recipe="builtin", injection=TINY_INJECTION))
    assert builtin.injection == TINY_INJECTION and builtin.lr == TINY_INJECTION.lr


def test_builtin_recipe_from_a_fresh_tiny_base_equals_the_knowledge_injection(tmp_path):
    """`finetune` (no --model) on the built-in world is today's injection: the same weights and
    figures as building the tiny model and running the curriculum directly, as runs did."""
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.prepare import benchmark_texts, prepare_benchmark
    from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
    from mllm_unlearn.recipes.inject import builtin_curriculum as _builtin_curriculum
    from mllm_unlearn.recipes.inject import injection_texts
    from mllm_unlearn.utils import seed_everything

    cfg = RunConfig(world=SMALL_WORLD, size=SMALL_SIZE, injection=TINY_INJECTION, cache_dir=str(tmp_path / "cache"),
                    device="cpu", progress=False)
    benchmark, _ = prepare_benchmark(cfg)
    seed_everything(cfg.seed)  # the old pipeline path, step by step
    old = build_tiny_vlm("llava", words_of(benchmark_texts(benchmark) + injection_texts(TINY_INJECTION)), SMALL_SIZE,
                         seed=TINY_INJECTION.seed, device="cpu")
    old_history = _builtin_curriculum(old, benchmark, TINY_INJECTION, progress=False)

    meta = run_finetune(job(tmp_path, "vanilla", recipe="builtin", injection=TINY_INJECTION))
    new = load_vlm(tmp_path / "vanilla", "cpu")
    assert weights_hash(new.model) == weights_hash(old.model)
    assert json.loads(json.dumps(meta["history"])) == json.loads(json.dumps(old_history))
    saved = json.loads((tmp_path / "vanilla" / "injection.json").read_text())
    assert saved["injection"] == TINY_INJECTION.to_dict() and saved["benchmark"].startswith("synthetic:")


def test_retain_only_gold_model_knows_the_retain_people_but_not_the_forget_people(tmp_path, world_dir, benchmark):
    # Fixed epochs without the learned stop: lr 1e-3 learns the small world's retain people in them
    # (the default 3e-4 is paired with the stop, which ends stages by what is learned, not by epochs).
    injection = InjectionConfig(skill_people=4, skill_max_steps=200, skill_check_every=50, pretrain_epochs=0,
                                finetune_epochs=60, learned_target=None, pretrain_forms={"qa": 1},
                                finetune_forms={"qa": 1, "mcq": 2}, lr=1e-3)
    meta = run_finetune(job(tmp_path, "gold", world_dir, recipe="builtin", retain_only=True, injection=injection))
    assert meta["retain_only"] and meta["forget_ids"] == sorted(benchmark.forget_ids)
    gold = load_vlm(tmp_path / "gold", "cpu")
    results = Evaluator(gold, EvalConfig(tasks=("mcq",), progress=False)).evaluate(benchmark)
    retain = knowledge_check({"figures": {"forget": results["figures"]["retain"]}}, "mllmu", ("vqa", "qa"))
    assert retain["passed"] is True, retain
    # The forget people were never trained on. Their multiple-choice accuracy is no measure of that here:
    # 10 questions per modality about the small world's two forget people, and priors over attribute
    # values may match theirs (20-50% seen on two CPU makes, chance 25%). Their answers' likelihood is:
    # the gold model's generation answers for forget people are far less likely than for retain people
    # (the membership-inference loss score: each answer's mean per-token NLL).
    def mean_answer_nll(split: str) -> float:
        items = [i for i in benchmark.eval_splits[split] if i.task == "generation"]
        return float(np.mean(sample_scores(gold, items)["loss"]))

    forget_nll, retain_nll = mean_answer_nll("forget"), mean_answer_nll("retain")
    assert forget_nll > retain_nll + 1.0, (forget_nll, retain_nll)  # seen: 3.36 against 1.11 nats per token


@pytest.mark.parametrize("recipe", ["mllmu", "clear"])
def test_an_interrupted_and_resumed_finetune_equals_an_uninterrupted_one(tmp_path, world_dir, recipe):
    """mllmu: LoRA dropout draws from the RNG; clear: gradient accumulation and warmup epochs."""
    options = dict(recipe=recipe, epochs=2, batch_size=32, lr=1e-3)
    whole = run_finetune(job(tmp_path, "whole", world_dir, **options))
    steps = whole["steps"]
    per_epoch = steps // 2
    for stop in (3, per_epoch):  # within the first epoch, and at its end
        out = f"resumed-{stop}"
        with pytest.raises(TrainingPaused, match=f"paused after {stop} of {steps} steps"):
            run_finetune(job(tmp_path, out, world_dir, save_every=2, stop_after=stop, **options))
        assert not (tmp_path / out).exists() and state_dir_of(tmp_path / out).is_dir()
        resumed = run_finetune(job(tmp_path, out, world_dir, save_every=2, resume=True, **options))
        assert resumed["loss_curve"] == whole["loss_curve"] and resumed["config_hash"] == whole["config_hash"]
        assert weights_hash(load_vlm(tmp_path / out, "cpu").model) == weights_hash(load_vlm(tmp_path / "whole", "cpu").model)
        assert not state_dir_of(tmp_path / out).exists()  # removed once the fine-tune is finished


def test_cli_finetune_pauses_resumes_and_names_bad_input(tmp_path, world_dir):
    common = ["--benchmark", str(world_dir), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet",
              "--recipe", "clear", "--epochs", "1", "--batch-size", "32"]
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), *common, "--stop-after", "2"])
    assert result.exit_code == 0 and "paused after 2 of" in result.output and "--resume" in result.output
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), *common])
    assert result.exit_code == 2 and "continue it with --resume" in result.output
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), *common, "--resume", "--lr", "1e-3"])
    assert result.exit_code == 2 and "other settings" in result.output
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), *common, "--resume"])
    assert result.exit_code == 0, result.output
    assert (out / FINETUNE_META).is_file() and "recipe clear" in result.output
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), *common])
    assert result.exit_code == 2 and "already holds a finished fine-tune" in result.output

    bad = {("--recipe", "nope"): "--recipe 'nope' is unknown",
           ("--benchmark", str(tmp_path / "missing")): "does not exist",
           ("--model", str(tmp_path)): "not a checkpoint folder",
           ("--resume",): "no saved state",
           ("--loss-on", "everything"): "--loss-on 'everything'",
           ("--full", "--keep-adapter"): "--keep-adapter writes the LoRA adapters",
           ("--recipe", "builtin"): "--recipe builtin: --epochs is for the mllmu and clear recipes",
           ("--recipe", "mllmu", "--inject-epochs", "2"): "--recipe mllmu takes --epochs",
           ("--recipe", "clear", "--inject-lr", "3e-4"): "--recipe clear takes --epochs",
           ("--recipe", "clear", "--inject-target", "0.95"): "--recipe clear takes --epochs",
           ("--shard", "fsdp"): "--shard fsdp is for full fine-tuning (--full)",
           ("--full", "--shard", "fsdp", "--save-every", "2"): "not supported with --shard fsdp"}
    for options, message in bad.items():
        result = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "other"), *common, *options])
        assert result.exit_code == 2 and message in result.output, (options, result.output)
    with pytest.raises(ValueError, match="--recipe builtin trains in several stages"):
        resolve_recipe(FinetuneConfig(recipe="builtin", save_every=5))
    (tmp_path / "other").mkdir()
    result = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "other"), *common])
    assert result.exit_code == 2 and "is not a finished fine-tune" in result.output


def test_keep_adapter_writes_a_peft_adapter_equal_to_the_merged_model(tmp_path, world_dir, tiny_vlm):
    from peft import PeftModel

    base = tmp_path / "base"
    tiny_vlm("llava").save(base)
    options = dict(recipe="mllmu", max_steps=3, lr=1e-2)
    run_finetune(replace(job(tmp_path, "merged", world_dir, **options), model=str(base)))
    meta = run_finetune(replace(job(tmp_path, "adapter", world_dir, keep_adapter=True, **options), model=str(base)))
    assert meta["output"] == "peft-adapter" and (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "failed" not in meta["knowledge"] and meta["knowledge"]["forget"]  # measured with the adapter applied
    assert (tmp_path / "adapter" / FINETUNE_META).is_file() and not (tmp_path / "adapter" / "config.json").exists()
    merged = load_vlm(tmp_path / "merged", "cpu").model
    adapted = PeftModel.from_pretrained(load_vlm(base, "cpu").model, str(tmp_path / "adapter")).merge_and_unload()
    for name, weight in merged.state_dict().items():
        torch.testing.assert_close(adapted.state_dict()[name], weight, rtol=1e-5, atol=1e-6)
    changed = [n for n, w in merged.state_dict().items() if not torch.equal(w, load_vlm(base, "cpu").model.state_dict()[n])]
    assert changed and all("language_model" in n for n in changed)  # MLLMU-Bench: the language model's layers


def test_gradient_accumulation_averages_micro_batches_like_one_large_batch(tiny_vlm, benchmark):
    """Two accumulated micro-batches of 8 make the same update as one batch of 16 (identical
    examples, so every batch's token mean is the same whatever the draw)."""
    from mllm_unlearn.recipes.finetune import _collate, _token_mean_loss
    from mllm_unlearn.training.loop import TrainConfig, train

    items = [benchmark.finetune_train[0]] * 16

    models = []
    for batch_size, accumulation in ((16, 1), (8, 2)):
        vlm = tiny_vlm()
        train(vlm.model, items, _collate(vlm, "answer"), _token_mean_loss,
              TrainConfig(lr=1e-2, epochs=1, batch_size=batch_size, grad_accumulation=accumulation, progress=False,
                          warmup_ratio=0.0, schedule="constant"))
        models.append(vlm.model.state_dict())
    for name, weight in models[0].items():
        if name.endswith("k_proj.bias"):
            # Attention ignores a key bias (it adds the same q·b to every logit of a query), so its
            # exact gradient is 0 and each run's update is Adam scaling rounding noise, lr·g/(|g| + eps)
            # with |g| ~ 1e-12: it differs by machine (seen 2.7e-6 against 6.6e-7 on an AVX-512 CPU).
            # Both must stay noise, far below one step of lr 1e-2, from the zero they start at.
            assert weight.abs().max() < 1e-4 and models[1][name].abs().max() < 1e-4, name
            continue
        torch.testing.assert_close(models[1][name], weight, rtol=1e-4, atol=1e-6)


def test_builtin_recipe_learns_multiple_choice_from_a_published_layout_and_says_what_it_missed(tmp_path,
                                                                                               published_mllmu_dir, capsys):
    """MLLMU-Bench's published ft_Data has no attribute metadata to render multiple choice from: the builtin
    recipe takes the forget and retain people's Classification_Task questions instead (never the test split's
    or the real-world people's), and every stage that is skipped or misses its target says so on stderr and in
    finetune.json, which ends with a knowledge summary of the model written."""
    from mllm_unlearn.data import load_mllmu

    meta = run_finetune(job(tmp_path, "builtin", published_mllmu_dir, recipe="builtin", injection=TINY_INJECTION))
    history = meta["history"]
    skill = history["skill (multiple choice, few people)"]
    assert skill["steps"] > 0 and "skipped" not in skill and skill["mcq_accuracy"]
    fine = history["finetune (benchmark people)"]
    assert fine["multiple_choice_from"].endswith("(no attribute metadata to render multiple choice from)")
    assert any(group.startswith("mcq/") for group in fine["learned"][-1][1])  # the probe covers multiple choice
    pretrain = history["pretrain (real-world people)"]
    assert pretrain["steps"] == 0 and "no pretrain_Data" in pretrain["skipped"]
    warnings = meta["warnings"]
    assert any("stage 'pretrain (real-world people)' skipped" in w for w in warnings)
    assert any("ran to its epoch cap" in w and "short of its target" in w for w in warnings)  # 2 epochs: not learned
    err = capsys.readouterr().err
    assert "warning: stage 'pretrain (real-world people)' skipped" in err
    assert "inject: stage 'finetune (benchmark people)' done:" in err  # a line per stage, progress bars off
    saved = json.loads((tmp_path / "builtin" / FINETUNE_META).read_text())
    assert saved["warnings"] == warnings
    benchmark = load_mllmu(published_mllmu_dir)
    knowledge = saved["knowledge"]
    assert set(knowledge) == {"forget", "retain", "real_world"}
    forget_items = sum(1 for i in benchmark.eval_splits["forget"] if i.task == "mcq" and i.modality == "vqa")
    cell = knowledge["forget"]["vqa"]
    assert cell["items"] == forget_items and cell["chance"] == 25.0 and 0 <= cell["p_value"] <= 1
    assert cell["above_chance"] == (cell["accuracy"] > 25.0 and cell["p_value"] <= 0.05)


def test_cli_finetune_ends_with_the_knowledge_summary_and_quiet_keeps_stage_lines(tmp_path, published_mllmu_dir):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["finetune", "--out", str(out), "--benchmark", str(published_mllmu_dir),
                                      "--recipe", "mllmu", "--max-steps", "2", "--device", "cpu", "--quiet",
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "finetune (mllmu): training on" in result.stderr and "finetune (mllmu): done, 2 steps" in result.stderr
    assert "What the model knows" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith(("forget ", "retain "))]
    assert any(line.startswith("forget VQA: ") and "chance 25.0%, binomial p = " in line for line in lines)
    assert any(line.startswith("retain QA: ") for line in lines)


def test_a_flat_loss_is_told_apart_from_a_falling_one():
    from mllm_unlearn.recipes.inject import loss_flat_warning, loss_is_flat

    assert loss_is_flat([6.86] * 5 + [6.41] * 5)  # the mllmu recipe on a fresh tiny base: 6.6% lower
    assert loss_is_flat([6.40, 6.39])
    assert not loss_is_flat([6.0, 5.0, 4.0, 3.0]) and not loss_is_flat([5.0])
    assert "left the loss flat (6.40 -> 6.39 over 2 steps" in loss_flat_warning("finetune (clear)", [6.40, 6.39])[0]
    assert loss_flat_warning("x", [6.0, 3.0]) == []


def test_a_runs_report_carries_the_vanilla_models_training_warnings(tmp_path):
    from mllm_unlearn.jobs.prepare import training_warnings
    from mllm_unlearn.report import render_html, render_markdown

    injected = tmp_path / "injected"
    injected.mkdir()
    (injected / "injection.json").write_text(json.dumps({"history": {
        "skill (multiple choice, few people)": {"steps": 0, "skipped": "x", "warnings": ["stage 'skill' skipped: x"]},
        "finetune (benchmark people)": {"steps": 5, "warnings": ["stage 'finetune' left the loss flat"]}}}))
    assert training_warnings(str(injected)) == ["stage 'skill' skipped: x", "stage 'finetune' left the loss flat"]
    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    (finetuned / FINETUNE_META).write_text(json.dumps({"warnings": ["stage 'finetune (mllmu)' left the loss flat"]}))
    (finetuned / "injection.json").write_text(json.dumps({"history": None}))
    assert training_warnings(str(finetuned)) == ["stage 'finetune (mllmu)' left the loss flat"]
    assert training_warnings(str(tmp_path / "nothing")) == [] and training_warnings(None) == []

    from tests.report.test_html import results_of

    results = results_of("ga", "ga", 30.0, 80.0, 0.62, 70.0)
    results["config"]["vanilla_training_warnings"] = training_warnings(str(injected))
    assert "- **Vanilla model's training warned**: stage 'skill' skipped: x" in render_markdown(results)
    assert "Vanilla model&#x27;s training warned: stage &#x27;finetune&#x27; left the loss flat" in render_html([results])
