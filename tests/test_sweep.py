"""`mllm-unlearn sweep` (validation split, Optuna, resumable, preset) and `run --preset`."""
import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.data import WorldConfig
from mllm_unlearn.data.validation import carve_out_validation, exclude_validation_people
from mllm_unlearn.eval import EvalConfig
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.presets import load_preset
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.jobs.sweep import SweepConfig, run_sweep, validation_benchmark
from mllm_unlearn.methods import MethodConfig
from mllm_unlearn.recipes import InjectionConfig

from .conftest import SMALL_SIZE, SMALL_WORLD

# Few, short trials: GA's learning rate and step count (the real space is methods/search_spaces.py).
SPACE = {"lr": ("log", 1e-3, 3e-2), "max_steps": ("int", 1, 3)}
VALIDATION_WORLD = replace(SMALL_WORLD, validation_percent=10)  # 2 + 2 fictitious, 1 real-world validation people


@pytest.fixture(scope="module")
def validation_benchmark_of_world(tmp_path_factory):
    from mllm_unlearn.data import generate_world, load_mllmu

    return load_mllmu(generate_world(tmp_path_factory.mktemp("world") / "mllmu", VALIDATION_WORLD), forget_percent=10)


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg = RunConfig(name="s", world=VALIDATION_WORLD, size=SMALL_SIZE, runs_dir=str(root / "runs"),
                    cache_dir=str(root / "cache"), device="cpu",
                    injection=InjectionConfig(pretrain_epochs=2, finetune_epochs=3, skill_max_steps=10),
                    method_cfg=MethodConfig(progress=False), eval=EvalConfig(progress=False), progress=False,
                    mia=None, relearn=None, allow_unknown=True)
    return root, cfg


@pytest.fixture(scope="module")
def three_trials(sweep_setup):
    root, cfg = sweep_setup
    return run_sweep(cfg, SweepConfig(method="ga", trials=3, out_dir=str(root / "a"), progress=False,
                                      fixed={"batch_size": 8}), space=SPACE)


def test_builtin_validation_people_are_trained_on_but_in_no_reported_split(validation_benchmark_of_world, benchmark):
    assert benchmark.validation is None  # validation_percent=0: the world of before (conftest's)
    benchmark = validation_benchmark_of_world
    validation = benchmark.validation
    people = validation.meta["people"]
    assert [len(people[g]) for g in ("forget", "retain", "real_world")] == list(VALIDATION_WORLD.validation_sizes())
    assert VALIDATION_WORLD.validation_sizes() == (2, 2, 1) and WorldConfig().validation_sizes() == (10, 10, 5)
    # Without validation people the validation fields stay out of the key (as before they existed).
    from dataclasses import asdict

    from mllm_unlearn.data.synthetic import WORLD_CONTENT_VERSION
    from mllm_unlearn.utils import stable_hash

    settings = {k: v for k, v in asdict(WorldConfig(validation_percent=0)).items()
                if k not in ("validation_percent", "validation_real_percent")}
    assert WorldConfig(validation_percent=0).key() == stable_hash({**settings, "content_version": WORLD_CONTENT_VERSION})
    reported = {i.person_id for items in benchmark.eval_splits.values() for i in items}
    everyone = {p for group in people.values() for p in group}
    assert not everyone & reported and not everyone & set(benchmark.forget_ids)
    trained = {i.person_id for i in benchmark.finetune_train + benchmark.pretrain_train}
    assert everyone <= trained  # the vanilla model learns them
    assert not everyone & {i.person_id for i in benchmark.retain_train + benchmark.forget_train}  # methods never see them
    assert {i.person_id for i in validation.forget_train} == set(people["forget"])
    assert set(people["retain"]) <= {i.person_id for i in validation.retain_train}
    assert not set(people["forget"]) & {i.person_id for i in validation.retain_train}
    assert {i.person_id for i in validation.eval_splits["real_world"]} == set(people["real_world"])
    assert validation_benchmark(benchmark) is validation


def test_carve_out_is_seeded_disjoint_and_left_out_of_reported_figures(benchmark, validation_benchmark_of_world):
    plain = benchmark  # no validation people, as a user's download
    carved = validation_benchmark(plain, seed=3)
    assert carved.meta["validation"] == "carve-out"
    people = carved.meta["people"]
    assert len(people["forget"]) == len(benchmark.forget_ids) == len(people["retain"])
    assert len(people["real_world"]) == 1  # ceil(15% of 4)
    retain_people = {i.person_id for i in benchmark.eval_splits["retain"]}
    assert set(people["forget"]) | set(people["retain"]) <= retain_people
    assert not set(people["forget"]) & set(people["retain"])
    assert carved_again(plain, 3) == people and carved_again(plain, 4) != people
    assert {i.split for i in carved.eval_splits["forget"]} == {"forget"}
    assert {i.person_id for i in carved.forget_train} == set(people["forget"])
    assert not set(people["forget"]) & {i.person_id for i in carved.retain_train}

    reported = exclude_validation_people(plain, {"validation": carved.meta})
    left = {split: {i.person_id for i in items} for split, items in reported.eval_splits.items()}
    assert not left["retain"] & (set(people["forget"]) | set(people["retain"]))
    assert not left["real_world"] & set(people["real_world"])
    assert left["forget"] == set(benchmark.forget_ids)
    assert len(reported.meta["validation_people_left_out"]) == 2 * len(benchmark.forget_ids) + 1
    elsewhere = exclude_validation_people(plain, {"validation": carved.meta, "benchmark": "dir:/other"}, "dir:/this")
    assert elsewhere.eval_splits == plain.eval_splits and "nobody left out" in elsewhere.meta["validation_note"]
    assert exclude_validation_people(plain, {"validation": carved.meta, "benchmark": "dir:/this"},
                                     "dir:/this").eval_splits == reported.eval_splits
    with_people = validation_benchmark_of_world
    builtin = exclude_validation_people(with_people, {"validation": with_people.validation.meta})
    assert builtin.eval_splits == with_people.eval_splits  # built-in validation people are in no reported split


def carved_again(benchmark, seed):
    return carve_out_validation(benchmark, seed).meta["people"]


def test_three_trial_sweep_writes_trials_front_report_and_preset(three_trials, sweep_setup):
    root, _ = sweep_setup
    out = root / "a"
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 3 and [t["number"] for t in trials] == [0, 1, 2]
    for trial in trials:
        assert set(trial["values"]) == {"lr", "max_steps", "batch_size"} and trial["values"]["batch_size"] == 8
        assert set(trial["tradeoff"]) == {"vqa", "qa"} and 0 <= trial["objectives"]["retention"] <= 1
        assert set(trial["figures"]) == {"forget", "retain", "real_world"}  # measured on the validation split
    front = json.loads((out / "front.json").read_text())
    assert front and {t["number"] for t in front} <= {0, 1, 2}
    for a in front:  # no trial dominates a front trial
        assert not any(b["objectives"]["forget_efficacy"] > a["objectives"]["forget_efficacy"]
                       and b["objectives"]["retention"] > a["objectives"]["retention"] for b in trials)
    preset = load_preset(out / "preset.json")
    best = max(front, key=lambda t: (t["overall"]["harmonic_mean"] or 0.0, -t["number"]))
    assert preset["method"] == "ga" and preset["values"] == best["values"]
    assert preset["chosen_by"]["trial"] == best["number"]
    assert preset["validation"]["people"] == three_trials["validation"]["people"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Pareto front" in page
    assert "validation people" in (out / "report.md").read_text()
    assert (out / "study.db").is_file()


def test_resumed_sweep_runs_only_the_missing_trials_and_same_seed_gives_same_trials(three_trials, sweep_setup):
    root, cfg = sweep_setup
    sweep = SweepConfig(method="ga", trials=2, out_dir=str(root / "b"), progress=False, fixed={"batch_size": 8})
    ran = []
    run_sweep(cfg, sweep, space=SPACE, on_trial=ran.append)
    assert len(ran) == 2
    resumed = run_sweep(cfg, replace(sweep, trials=3), space=SPACE, on_trial=ran.append)
    assert len(ran) == 3 and len(resumed["trials"]) == 3
    # Same seed, same trials (also across the resume), and the same figures: the model was
    # restored after every trial (this process reloaded it; the first sweep kept it loaded).
    assert [t["values"] for t in resumed["trials"]] == [t["values"] for t in three_trials["trials"]]
    assert [t["figures"] for t in resumed["trials"]] == [t["figures"] for t in three_trials["trials"]]
    # Both processes' vanilla validation figures: one evaluation, cached once (eval/cache.py).
    assert len(list((root / "cache" / "eval").glob("sweep-*.json"))) == 1
    again = run_sweep(cfg, replace(sweep, trials=3), space=SPACE, on_trial=ran.append)
    assert len(ran) == 3 and len(again["trials"]) == 3  # nothing left to run
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(replace(cfg, seed=1), replace(sweep, trials=4), space=SPACE)
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(cfg, replace(sweep, trials=4, fixed={"batch_size": 4}), space=SPACE)


def test_run_preset_applies_its_values_cli_options_override_and_results_record_it(three_trials, sweep_setup,
                                                                                  tmp_path, monkeypatch):
    root, cfg = sweep_setup
    preset_path = tmp_path / "preset.json"
    preset_path.write_text(json.dumps({"method": "npo", "values": {"lr": 0.003, "epochs": 3,
                                                                     "extra": {"beta": 0.7}}}))
    import mllm_unlearn.jobs.run as pipeline

    seen = []

    def fake_run(config):  # stop before any work: only the configuration is checked
        seen.append(config)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    args = ["run", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--preset", str(preset_path)]
    CliRunner().invoke(app, args)
    CliRunner().invoke(app, args + ["--lr", "0.01", "-o", "beta=0.2"])
    first, second = seen
    # The run resolves the method's settings: the model's preset, the file's values, then the options.
    (first_cfg, _), (second_cfg, _) = pipeline.resolve_method_config(first), pipeline.resolve_method_config(second)
    assert first.method == "npo" and first_cfg.lr == 0.003 and first_cfg.epochs == 3
    assert first_cfg.extra["beta"] == 0.7 and first_cfg.extra["reference"] == "vanilla"  # default kept
    assert second_cfg.lr == 0.01 and second_cfg.extra["beta"] == 0.2 and second_cfg.epochs == 3
    assert first.preset["values"]["lr"] == 0.003 and first.preset["path"] == str(preset_path)
    result = CliRunner().invoke(app, args + ["--method", "ga"])
    assert result.exit_code == 2 and "differs from the preset's method" in result.output
    preset_path.write_text(json.dumps({"method": "npo", "values": {"learning_rate": 1}}))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "unknown option(s) ['learning_rate']" in result.output
    monkeypatch.undo()

    # Through the pipeline: the sweep's preset, recorded in results.json and named in the report.
    from mllm_unlearn.methods.search_spaces import apply_values

    preset = load_preset(root / "a" / "preset.json")
    run_cfg = replace(cfg, name="with-preset", preset=preset,
                      method_cfg=apply_values(cfg.method_cfg, preset["values"]),
                      eval=EvalConfig(tasks=("mcq",), max_items_per_group=6, progress=False))
    results = run_pipeline(run_cfg)
    saved = json.loads((root / "runs" / "with-preset" / "results.json").read_text())
    assert saved["config"]["preset_file"]["values"] == preset["values"]
    assert saved["config"]["method_config"]["lr"] == preset["values"]["lr"]
    assert set(results["tradeoff"]) == {"vqa", "qa"} and "harmonic_mean" in results["tradeoff"]["vqa"]
    report = (root / "runs" / "with-preset" / "report.md").read_text()
    assert "chosen on the built-in world's validation people" in report and "## Trade-off" in report
    page = (root / "runs" / "with-preset" / "report.html").read_text()
    assert "Trade-off (classification, chance-corrected)" in page and "chosen on the built-in world" in page


class _LowestTrial:
    """Stands in for an Optuna trial: every option at the low end of its range."""

    def suggest_float(self, name, low, high, log=False):
        return low

    def suggest_int(self, name, low, high):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]


def test_every_method_has_a_search_space_its_options_accept():
    from mllm_unlearn.methods import available_methods, get_method
    from mllm_unlearn.methods.defaults import method_defaults
    from mllm_unlearn.methods.search_spaces import apply_values, sample, search_space

    for method in available_methods():
        values = sample(search_space(method), _LowestTrial())
        cfg = apply_values(method_defaults(method), values)
        get_method(method).check_options(cfg)  # every extra.<key> is an option the method reads
        for name, value in values.items():
            assert (cfg.extra[name.removeprefix("extra.")] if name.startswith("extra.") else getattr(cfg, name)) == value
    with pytest.raises(ValueError, match="no search space"):
        search_space("not-a-method")


def test_choice_is_the_best_harmonic_mean_of_the_front_with_an_optional_retention_floor():
    from mllm_unlearn.jobs.sweep import choose

    def trial(number, efficacy, retention, harmonic):
        return {"number": number, "objectives": {"forget_efficacy": efficacy, "retention": retention},
                "overall": {"harmonic_mean": harmonic}}

    front = [trial(0, 0.4, 0.84, 0.40), trial(3, 0.99, 0.37, 0.54), trial(5, 0.2, 0.99, 0.54)]
    assert choose(front)["number"] == 3  # best harmonic mean; the tie goes to the earlier trial
    assert choose(front, min_retention=0.8)["number"] == 5
    assert choose(front, min_retention=0.995)["number"] == 3  # none keeps that much: the whole front


def test_cli_sweep_runs_on_a_given_model_and_benchmark_and_names_bad_input(three_trials, sweep_setup):
    root, _ = sweep_setup
    preset = load_preset(root / "a" / "preset.json")
    world = root / "cache" / "benchmarks"
    [world_dir] = [p for p in world.iterdir() if p.name.startswith("synthetic-")]
    out = root / "cli"
    args = ["sweep", "--method", "ga", "--trials", "1", "--model", preset["model"], "--benchmark", str(world_dir),
            "--out", str(out), "--batch-size", "8", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "# Sweep: ga" in result.output and "mllm-unlearn run --preset" in result.output
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 1 and trials[0]["values"]["batch_size"] == 8
    assert json.loads((out / "preset.json").read_text())["validation"]["validation"] == "built-in validation people"
    result = CliRunner().invoke(app, ["sweep", "--method", "nope", "--out", str(root / "bad")])
    assert result.exit_code == 2 and "no search space for method 'nope'" in result.output
    assert not (root / "bad").exists()  # refused before any work
