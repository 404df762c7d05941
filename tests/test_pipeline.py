"""The whole job through the Python API and the CLI, on a small world."""
import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval import EvalConfig
from mllm_unlearn.eval.mia import MIAConfig
from mllm_unlearn.eval.relearn import RelearnConfig
from mllm_unlearn.interventions import load_edit
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.results import versions
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.methods import MethodConfig
from mllm_unlearn.recipes import InjectionConfig

from .conftest import SMALL_SIZE, SMALL_WORLD


def small_run(tmp_path, cache: str, name: str = "r") -> RunConfig:
    return RunConfig(
        name=name, world=SMALL_WORLD, size=SMALL_SIZE, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / cache),
        method="ga",  # the fastest; the default (MLLMEraser) runs through the pipeline in test_mllmeraser_runs_*
        injection=InjectionConfig(pretrain_epochs=2, finetune_epochs=3, skill_max_steps=10), device="cpu",
        method_cfg=MethodConfig(max_steps=3, batch_size=8, progress=False),
        eval=EvalConfig(max_items_per_group=6, max_new_tokens=6, progress=False), progress=False,
        mia=MIAConfig(max_items=24), relearn=RelearnConfig(steps=2, eval_every=1, batch_size=4, max_eval_items=4),
        attacks=None,  # the attack battery has its own pipeline test (test_pipeline_attacks.py)
        allow_unknown=True,  # a few injection epochs: the model need not know the forget people yet
    )


def test_versions_record_the_stack_a_run_depends_on():
    """results.json's ``config.versions``: the modules as imported, and datasets when installed."""
    from importlib import metadata

    import accelerate
    import peft
    import tokenizers
    import transformers

    found = versions()
    assert found["torch"] == torch.__version__ and found["transformers"] == transformers.__version__
    assert found["tokenizers"] == tokenizers.__version__ and found["peft"] == peft.__version__
    assert found["accelerate"] == accelerate.__version__
    assert {"mllm_unlearn", "python", "numpy", "safetensors"} <= set(found)
    try:
        assert found["datasets"] == metadata.version("datasets")
    except metadata.PackageNotFoundError:
        assert "datasets" not in found


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

    # Robustness: MIA before/after, the relearning curve, the generalisation breakdown, report.html.
    mia = saved["robustness"]["mia"]
    assert set(mia) == {"vanilla", "unlearned"} and mia["unlearned"]["counts"] == {"members": 24, "non_members": 24}
    relearn = saved["robustness"]["relearn"]
    assert relearn["steps"] == [0, 1, 2] and first["robustness"] == second["robustness"]
    assert set(saved["generalisation"]["unlearned"]["vqa"]) == {"forget", "image_only", "question_only", "test"}
    assert "## Membership inference" in report and "## Relearning attack" in report
    page = (run_dir / "report.html").read_text()
    assert 'id="plot-mia"' in page and 'id="plot-relearn"' in page and 'id="plot-tradeoff"' in page

    result = CliRunner().invoke(app, ["compare", str(run_dir), str(tmp_path / "runs" / "c"),
                                      "--out", str(tmp_path / "compare")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "compare.html").is_file() and "| c (ga) |" in (tmp_path / "compare.md").read_text()


def test_cli_rejects_unknown_method_clearly(tmp_path):
    result = CliRunner().invoke(app, ["run", "--method", "nope", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output


def test_mllmu_protocol_is_recorded_and_named_in_the_report(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()  # shares the llava vanilla cache of the gradient-method runs
    cfg = small_run(base, "cache_methods", "protocol-mllmu")
    # The likelihood scorer keeps the test quick (the protocol's own default is generate).
    cfg = replace(cfg, eval=replace(cfg.eval, protocol="mllmu", scorer="likelihood", tasks=("mcq",)), mia=None, relearn=None)
    results = run_pipeline(cfg)
    saved = json.loads((base / "runs" / "protocol-mllmu" / "results.json").read_text())
    assert saved["config"]["eval"]["protocol"] == "mllmu" and saved["vanilla"]["config"]["protocol"] == "mllmu"
    assert set(results["vanilla"]["demonstration_people"]) == {"forget", "test", "retain"}
    assert results["unlearned"]["demonstration_people"] == results["vanilla"]["demonstration_people"]
    report = (base / "runs" / "protocol-mllmu" / "report.md").read_text()
    assert "protocol `mllmu` (MLLMU-Bench's eval.py" in report and "classification scorer `likelihood`" in report


def test_cli_refuses_protocol_mixups_before_any_work(tmp_path):
    common = ["--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    result = CliRunner().invoke(app, ["run", "--protocol", "mllmu", "--few-shot", "1", *common])
    assert result.exit_code == 2 and "few_shot (1) is an option of protocol 'ours'" in result.output
    result = CliRunner().invoke(app, ["run", "--benchmark", "clear", "--protocol", "mllmu", *common])
    assert result.exit_code == 2 and "CLEAR's own protocol" in result.output
    result = CliRunner().invoke(app, ["run", "--protocol", "tofu", *common])
    assert result.exit_code == 2 and "protocol must be one of" in result.output
    assert not (tmp_path / "cache").exists()


def test_cli_lists_methods():
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0 and "ga" in result.output and "graddiff" in result.output


def test_unknown_family_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        run_pipeline(replace(small_run(tmp_path, "c"), family="gpt"))


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
@pytest.mark.parametrize("method,extra", [("ga", {}), ("graddiff", {}), ("kl", {}), ("npo", {"beta": 0.2}),
                                          ("rmu", {"layer": 1}), ("mmunlearner", {"mask": "both"})])
def test_every_gradient_method_runs_through_the_pipeline(tmp_path_factory, method, extra, family):
    base = tmp_path_factory.getbasetemp()  # one vanilla cache per family, shared by the runs
    name = f"{method}-{family}"
    cfg = small_run(base, "cache_methods" if family == "llava" else "cache_qwen2.5-vl", name)
    cfg = replace(cfg, family=family, method=method, method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    # --max-pixels rides along on one Qwen run (the tiny 32 x 32 portraits are below any cap it may take).
    max_pixels = 4096 if family != "llava" and method == "mmunlearner" else None
    results = run_pipeline(replace(cfg, mia=None, relearn=None, max_pixels=max_pixels))
    assert results["robustness"]["mia"] == {"skipped": "switched off (--no-mia)"}
    assert results["edit"]["steps"] == 3 and results["config"]["method_config"]["extra"] == extra
    assert results["config"]["family"] == family and results["cost"]["changed_parameters"] > 0
    # --dtype auto, the default: a model this tool built stays float32, and the run records both.
    assert results["config"]["dtype"] == "float32" and results["config"]["dtype_option"] == "auto"
    assert results["config"]["max_pixels"] == max_pixels
    assert results["config"]["image_max_pixels"] == (None if family == "llava" else max_pixels or 32 * 32)
    assert (base / "runs" / name / "report.md").is_file()


def test_cli_rejects_unknown_method_option_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["run", "--method", "npo", "-o", "betta=1", "--runs-dir", str(tmp_path / "runs"),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "unknown option(s) betta" in result.output
    assert not (tmp_path / "cache").exists()  # failed before generating or training anything


def test_npo_with_a_retain_finetuned_reference_trains_it_once_and_caches_it(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    cfg = small_run(base, "cache_methods", "npo-retain")
    cfg = replace(cfg, method="npo", method_cfg=replace(cfg.method_cfg, extra={"reference": "retain-finetuned"}),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    first = run_pipeline(cfg)
    path = first["config"]["reference_model_path"]
    assert "/retain/" in path and "train retain-only reference" in first["cost"]["wall_time_s"]
    assert first["config"]["method_config"]["extra"] == {"reference": "retain-finetuned"}
    again = run_pipeline(replace(cfg, name="npo-retain-2"))
    assert again["config"]["reference_model_path"] == path
    assert "load retain-only reference" in again["cost"]["wall_time_s"]
    # A retain-only reference is not the vanilla model: NPO's first loss differs from 2/β·log 2.
    import math

    from mllm_unlearn.interventions import load_edit

    losses = load_edit(base / "runs" / "npo-retain" / "edit").meta["losses"]
    assert losses[0] != pytest.approx(2 / 0.4 * math.log(2), rel=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_manu_runs_through_the_pipeline(tmp_path_factory, family):
    base = tmp_path_factory.getbasetemp()  # llava shares the vanilla cache of the gradient-method runs
    cfg = small_run(base, "cache_methods" if family == "llava" else f"cache_{family}", f"manu-{family}")
    extra = {"alpha": 0.1, "selection": "per_layer", "scale": 0.0}
    cfg = replace(cfg, family=family, method="manu", method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    results = run_pipeline(cfg)
    assert results["edit"]["kind"] == "neuron_mask" and results["config"]["method_config"]["extra"] == extra
    edit_dir = base / "runs" / f"manu-{family}" / "edit"
    assert (edit_dir / "neurons.safetensors").is_file()
    meta = json.loads((edit_dir / "edit.json").read_text())["meta"]
    # SMALL_SIZE: 2 LM layers, 2 vision blocks; LLaVA reads only the first (vision_feature_layer=-2)
    read_vision_blocks = 1 if family == "llava" else 2
    sites = {**{f"lm.{k}": 0 for k in range(2)}, **{f"vision.{k}": 0 for k in range(read_vision_blocks)}}
    assert set(meta["neurons_per_site"]) == set(sites) and meta["neurons"] == sum(meta["neurons_per_site"].values()) > 0
    assert results["unlearned"]["figures"]["forget"]["vqa"]["mcq_count"] > 0


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_mip_editor_runs_through_the_pipeline(tmp_path_factory, family):
    from mllm_unlearn.interventions import load_edit

    base = tmp_path_factory.getbasetemp()
    cache = "cache_methods" if family == "llava" else "cache_qwen2.5-vl"  # LLaVA's vanilla is shared with the runs above
    cfg = small_run(base, cache, f"mip-editor-{family}")
    extra = {"path_samples": 4, "layer": 0}
    cfg = replace(cfg, family=family, method="mip-editor", method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    results = run_pipeline(cfg)
    assert results["edit"]["kind"] == "composite" and results["edit"]["steps"] == 3
    edit = load_edit(results["edit"]["path"])
    paths = edit.meta["mip_editor"]["paths"]
    assert any("language_model" in p for p in paths)
    if family == "qwen2.5-vl":  # the small LLaVA's one vision layer feeds nothing (feature layer -2)
        assert any(".visual." in p for p in paths)
    assert results["cost"]["changed_parameters"] > 0


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_mllmeraser_runs_through_the_pipeline(tmp_path_factory, family):
    base = tmp_path_factory.getbasetemp()
    cfg = small_run(base, "cache_methods" if family == "llava" else "cache_qwen2.5-vl", f"mllmeraser-{family}")
    extra = {"layers": "all", "pgd_steps": 1, "max_retain": 200, "task_strengths": "cloze=0.3"}  # as -o gives it
    if family == "qwen2.5-vl":
        extra["lift"] = "256"  # the lifted gate, end to end (as -o lift=256 gives it)
    cfg = replace(cfg, family=family, method="mllmeraser", method_cfg=replace(cfg.method_cfg, extra=extra),
                  eval=replace(cfg.eval, tasks=("mcq",)))
    results = run_pipeline(cfg)
    assert results["edit"]["kind"] == "steering" and results["cost"]["changed_parameters"] == 0
    edit = load_edit(base / "runs" / f"mllmeraser-{family}" / "edit")
    assert edit.layers == [1] and edit.meta["counts"]["retain_prompts"] > 0
    assert edit.task_strengths == {"cloze": 0.3}
    assert {k: v.width for k, v in edit.features.items()} == ({1: 256} if family == "qwen2.5-vl" else {})
    # The pipeline passed the real-world people's training data as retain data too (uses_prior_knowledge).
    assert edit.meta["retain_splits"] == ["finetune", "pretrain"]


def stopped_cli_runs(tmp_path, monkeypatch) -> tuple[list[str], list[RunConfig]]:
    """`run`'s base arguments and the list its RunConfigs land in: the pipeline stops before any
    work, so only the configuration the options made is checked."""
    import mllm_unlearn.jobs.run as pipeline

    seen: list[RunConfig] = []

    def fake_run(cfg):
        seen.append(cfg)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    return ["run", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")], seen


def test_cli_max_pixels_reaches_the_run_and_is_refused_for_llava_before_any_work(tmp_path, monkeypatch):
    args = ["run", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args + ["--family", "llava", "--max-pixels", "200704"])
    assert result.exit_code == 2 and "--max-pixels applies to Qwen2-VL and Qwen2.5-VL" in result.output
    assert not (tmp_path / "cache").exists()  # refused before the benchmark or any model was built
    result = CliRunner().invoke(app, args + ["--family", "qwen2-vl", "--max-pixels", "0"])
    assert result.exit_code == 2 and "--max-pixels must be a positive number" in result.output

    args, seen = stopped_cli_runs(tmp_path, monkeypatch)
    CliRunner().invoke(app, args + ["--family", "qwen2.5-vl", "--max-pixels", "200704"])
    assert seen[0].max_pixels == 200704


def test_cli_task_formats_sets_the_injection_forms(tmp_path, monkeypatch):
    args, seen = stopped_cli_runs(tmp_path, monkeypatch)
    CliRunner().invoke(app, args + ["--task-formats", "0.25"])
    CliRunner().invoke(app, args)
    assert seen[0].injection.qa_task_forms == {"generation": 0.25, "cloze": 0.25}
    assert seen[1].injection.qa_task_forms == {}  # off by default
    from mllm_unlearn.methods.defaults import DEFAULT_METHOD

    assert seen[1].method == DEFAULT_METHOD == RunConfig().method  # the sweep-chosen default, CLI and API alike
    result = CliRunner().invoke(app, args + ["--task-formats", "0.7"])
    assert result.exit_code == 2 and "task-formats" in result.output


def test_cli_inject_lr_and_target_set_the_curriculum_and_so_another_vanilla_model(tmp_path, monkeypatch):
    from mllm_unlearn.recipes.inject import injection_cache_key

    args, seen = stopped_cli_runs(tmp_path, monkeypatch)
    CliRunner().invoke(app, args + ["--inject-lr", "1e-3"])
    CliRunner().invoke(app, args + ["--inject-lr", "1e-3", "--inject-target", "0.9"])
    CliRunner().invoke(app, args)
    assert (seen[0].injection.lr, seen[0].injection.learned_target) == (1e-3, 0.95)
    assert (seen[1].injection.lr, seen[1].injection.learned_target) == (1e-3, 0.9)
    default = InjectionConfig()
    assert (seen[2].injection.lr, seen[2].injection.learned_target) == (default.lr, default.learned_target) == (3e-4, 0.95)
    keys = {injection_cache_key("llava", {}, "world", cfg.injection) for cfg in seen}
    assert len(keys) == 3  # a cached model of one setting is never taken for another's
    for option, bad, message in [("--inject-lr", "0", "--inject-lr must be a positive learning rate"),
                                 ("--inject-lr", "-1e-4", "--inject-lr must be a positive learning rate"),
                                 ("--inject-target", "0", "--inject-target must lie in (0, 1]"),
                                 ("--inject-target", "1.5", "--inject-target must lie in (0, 1]")]:
        result = CliRunner().invoke(app, args + [option, bad])
        assert result.exit_code == 2 and message in result.output, (option, bad, result.output)
    assert len(seen) == 3  # refused before any work


def test_benchmark_scripts_resolve_the_default_runs_cache_or_name_what_is_missing(tmp_path):
    from mllm_unlearn.jobs.prepare import default_cached_model, resolve_default_inputs

    bench, model = default_cached_model(str(tmp_path))
    assert bench.parent == tmp_path / "benchmarks" and model.parent == tmp_path / "vanilla"
    with pytest.raises(FileNotFoundError, match=f"{bench}.*run `make run` first"):
        resolve_default_inputs(None, None, str(tmp_path))
    assert resolve_default_inputs("m", "b", str(tmp_path)) == ("b", "m")  # given paths are used as they are
    bench.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(model)):
        resolve_default_inputs(None, None, str(tmp_path))
    model.mkdir(parents=True)
    assert resolve_default_inputs(None, None, str(tmp_path)) == (str(bench), str(model))


def test_a_given_edit_or_an_exported_checkpoint_is_measured_like_the_run_that_made_it(tmp_path):
    from mllm_unlearn.jobs.export import UNLEARNING_FILE
    from mllm_unlearn.models import load_vlm

    cfg = replace(small_run(tmp_path, "cache", "a"), relearn=None)
    first = run_pipeline(cfg)
    run_dir = tmp_path / "runs" / "a"

    # Export: the run's edit baked into its vanilla model, saved as a normal checkpoint.
    out = tmp_path / "unlearned"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / UNLEARNING_FILE).read_text())
    assert provenance["method"] == "ga" and provenance["edit_kind"] == "weight_delta"
    assert provenance["base_model"] == first["config"]["model_path"]
    exported = dict(load_vlm(out, device="cpu").model.named_parameters())
    vanilla = load_vlm(first["config"]["model_path"], device="cpu")
    edit = load_edit(run_dir / "edit")
    with edit.applied(vanilla):
        for name, param in vanilla.model.named_parameters():
            assert torch.equal(exported[name], param), name
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output

    # The saved edit, and the exported checkpoint, evaluated in place of unlearning: same figures.
    for name, source in (("given-edit", run_dir / "edit"), ("given-checkpoint", out)):
        again = run_pipeline(replace(cfg, name=name, edit=str(source), method="not-used"))
        assert again["unlearned"]["figures"] == first["unlearned"]["figures"], name
        assert again["unlearned"]["predictions"] == first["unlearned"]["predictions"], name
        assert again["robustness"]["mia"] == first["robustness"]["mia"], name
        assert again["config"]["edit_source"] == str(source)
        assert "unlearn (ga)" not in again["cost"]["wall_time_s"] and "load edit" in again["cost"]["wall_time_s"]
        assert f"Edit given, not trained by this run: `{source}`" in (tmp_path / "runs" / name / "report.md").read_text()
    assert again["config"]["method"] == "checkpoint" and again["edit"]["kind"] == "weight_delta"

    # An edit of another model is refused before anything is evaluated.
    with pytest.raises(ValueError, match="weight edit does not fit this model"):
        run_pipeline(replace(cfg, name="misfit", edit=str(run_dir / "edit"), family="qwen2-vl", eval=None))

    # The cached vanilla model records its world: on another world it would meet people it never saw.
    with pytest.raises(ValueError, match="was trained on the built-in world 'synthetic:.*but this run's world is"):
        run_pipeline(replace(cfg, name="other-world", model=first["config"]["model_path"],
                             world=replace(SMALL_WORLD, seed=1)))
    assert load_edit(tmp_path / "runs" / "given-checkpoint" / "edit").meta["checkpoint"] == str(out)


def test_cli_edit_and_export_name_what_is_wrong(tmp_path, tiny_vlm):
    from mllm_unlearn.interventions import Steering

    result = CliRunner().invoke(app, ["run", "--edit", str(tmp_path), "--lr", "1e-4", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--edit evaluates a given edit; --lr only apply when unlearning" in result.output
    result = CliRunner().invoke(app, ["run", "--edit", str(tmp_path / "nothing"), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "neither a saved edit" in result.output

    vlm = tiny_vlm("llava")
    vlm.save(tmp_path / "model")
    hidden = vlm.model.config.text_config.hidden_size
    Steering({1: torch.zeros(hidden, hidden)}, strength=1.0).save(tmp_path / "steering")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "steering"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a run folder (no results.json): say which model it edits with --model" in result.output
    result = CliRunner().invoke(app, ["export", str(tmp_path / "steering"), "--model", str(tmp_path / "model"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cannot be baked into weights" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no-run does not exist (expected a run folder or a saved edit)" in result.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text('{"config": {}}')
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "records no config.model_path: say which model" in result.output


@pytest.mark.parametrize("method", ["manu", "mip-editor"])
def test_an_exported_mask_or_composite_edit_reloads_as_the_model_with_its_hooks(method, benchmark, tiny_vlm, tmp_path):
    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.interventions import CompositeEdit, NeuronMask
    from mllm_unlearn.jobs.export import export_unlearned_model
    from mllm_unlearn.methods import get_method
    from mllm_unlearn.models import load_vlm

    vlm = tiny_vlm("llava")
    forget = [i for i in benchmark.forget_train if i.modality == "qa"][:4] + \
        [i for i in benchmark.forget_train if i.modality == "vqa"][:4]
    extra = {"alpha": 0.1} if method == "manu" else {"path_samples": 4, "top_k": 3, "layer": 0}
    edit = get_method(method).unlearn(vlm, forget, benchmark.retain_train[:8],
                                      MethodConfig(max_steps=2, batch_size=4, lr=5e-2, progress=False, extra=extra))
    if method == "manu":
        assert isinstance(edit, NeuronMask)
    else:  # pruned-only neurons as hooks, path columns retrained
        assert isinstance(edit, CompositeEdit) and [p.kind for p in edit.parts] == ["neuron_mask", "weight_delta"]
    batch = Encoder(vlm).batch(benchmark.eval_splits["forget"][:6], train=False)
    with torch.no_grad(), edit.applied(vlm):
        hooked = vlm.model(**batch).logits
    export_unlearned_model(vlm, edit, tmp_path / "out", base_model="tiny")
    with torch.no_grad():
        reloaded = load_vlm(tmp_path / "out", device="cpu").model(**batch).logits
    assert torch.allclose(reloaded, hooked, atol=1e-5, rtol=0)
