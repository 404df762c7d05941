"""The vanilla model shipped with the package: the default run's, found by its cache key, verified,
copied into the cache, and never used for another world or when damaged."""
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.prepare import prepare_benchmark, prepare_vanilla, vanilla_location
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.models import load_vlm
from mllm_unlearn.recipes import InjectionConfig, shipped
from mllm_unlearn.recipes.shipped import (
    MANIFEST,
    WEIGHTS,
    file_sha256,
    install_shipped,
    shipped_model,
    training_data_fingerprint,
    verify_shipped,
    write_shipped,
)

from .test_pipeline import small_run


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_the_default_run_finds_its_vanilla_model_shipped(tmp_path, family):
    """The default run's key names a shipped model trained on this world with this recipe: a change
    of the default recipe or world fails here, not silently in users' first runs (the default LLaVA,
    and Qwen2.5-VL: `--family qwen2.5-vl`)."""
    cfg = RunConfig(cache_dir=str(tmp_path), family=family)
    benchmark, key = prepare_benchmark(cfg)
    name = vanilla_location(cfg, key).name
    folder = shipped_model(name)
    assert folder is not None, (f"no shipped vanilla model {name} for the default run (shipped: {shipped.shipped_models()}): "
                                "re-ship it with benchmarks/ship_vanilla.py")
    manifest = verify_shipped(folder)  # files present, weights' SHA-256 as recorded
    assert manifest["training_data"] == training_data_fingerprint(benchmark)
    meta = json.loads((folder / "injection.json").read_text())
    assert meta["benchmark"] == key and meta["family"] == cfg.family
    recipe = cfg.injection.to_dict()
    assert {k: recipe[k] for k in meta["injection"]} == meta["injection"]
    # Fields added since it was trained are those left out of the cache key at their defaults.
    assert set(recipe) - set(meta["injection"]) <= {"fused_optimizer"} and not cfg.injection.fused_optimizer
    assert set(manifest["files"]) >= {WEIGHTS, "injection.json", "config.json", "tokenizer.json"}
    # Installed into a cache, it loads as the run loads it (every file the family saves was shipped).
    install_shipped(name, tmp_path / "entry", benchmark)
    vlm = load_vlm(tmp_path / "entry", "cpu")
    assert vlm.adapter.family == family and file_sha256(tmp_path / "entry" / WEIGHTS) == manifest["sha256"]


@pytest.fixture(scope="module")
def shipped_small(tmp_path_factory):
    """A small world's vanilla model trained into one cache and shipped from a scratch assets root."""
    base = tmp_path_factory.mktemp("shipped")
    cfg = small_run(base, "trained")
    benchmark, key = prepare_benchmark(cfg)
    _, path, trained = prepare_vanilla(replace(cfg, shipped_vanilla=False), benchmark, key)
    assert trained
    root = base / "assets"
    write_shipped(Path(path), benchmark, {"command": "test"}, root=root)
    return base, root, Path(path).name


def test_a_run_starts_from_the_shipped_model(shipped_small, tmp_path, monkeypatch):
    base, root, name = shipped_small
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    results = run_pipeline(small_run(tmp_path, "empty_cache"))
    config = results["config"]
    assert config["model_path"].endswith(name)
    assert config["vanilla_source"].startswith("shipped with mllm-unlearn")
    assert "knowledge injection" not in results["cost"]["wall_time_s"]
    assert "load vanilla model" in results["cost"]["wall_time_s"]
    cached = tmp_path / "empty_cache" / "vanilla" / name
    assert file_sha256(cached / WEIGHTS) == file_sha256(base / "trained" / "vanilla" / name / WEIGHTS)
    assert (cached / MANIFEST).is_file() and (cached / "injection.json").is_file()
    assert "Vanilla model: shipped with mllm-unlearn" in (tmp_path / "runs" / "r" / "report.md").read_text()


def test_no_shipped_vanilla_trains_the_model_here(shipped_small, tmp_path, monkeypatch):
    _, root, name = shipped_small
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    cfg = replace(small_run(tmp_path, "own"), shipped_vanilla=False,
                      injection=InjectionConfig(pretrain_epochs=1, finetune_epochs=1, skill_max_steps=2))
    benchmark, key = prepare_benchmark(cfg)
    _, path, trained = prepare_vanilla(cfg, benchmark, key)
    assert trained and not (tmp_path / "own" / "vanilla" / name).exists()
    # Another recipe is another key: nothing shipped matches it, with or without the option.
    cfg = replace(cfg, shipped_vanilla=True, cache_dir=str(tmp_path / "own2"))
    assert prepare_vanilla(cfg, benchmark, key)[2]


def test_damaged_shipped_weights_are_refused_by_name(shipped_small, tmp_path):
    base, root, name = shipped_small
    damaged = tmp_path / "assets"
    write_shipped(base / "trained" / "vanilla" / name, prepare_benchmark(small_run(base, "trained"))[0], {"command": "test"},
                  root=damaged)
    weights = damaged / name / WEIGHTS
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n")  # an LFS pointer
    benchmark, _ = prepare_benchmark(small_run(base, "trained"))
    with pytest.raises(ValueError, match=r"model\.safetensors: SHA-256 .* --no-shipped-vanilla"):
        install_shipped(name, tmp_path / "cache" / name, benchmark, root=damaged)
    assert not (tmp_path / "cache" / name).exists()  # nothing half-copied
    (damaged / name / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks tokenizer.json"):
        install_shipped(name, tmp_path / "cache" / name, benchmark, root=damaged)


def test_a_shipped_model_of_other_training_data_is_not_used(shipped_small, tmp_path):
    """Same key (the world's configuration) but another world generator: warn and train instead."""
    base, root, name = shipped_small
    manifest_file = root / name / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    stale = tmp_path / "assets" / name
    stale.mkdir(parents=True)
    for file in manifest["files"]:
        (stale / file).write_bytes((root / name / file).read_bytes())
    (stale / MANIFEST).write_text(json.dumps({**manifest, "training_data": "0" * 16}))
    benchmark, _ = prepare_benchmark(small_run(base, "trained"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert install_shipped(name, tmp_path / "cache" / name, benchmark, root=tmp_path / "assets") is None
    assert any("trained on other data" in str(w.message) and "ship_vanilla.py" in str(w.message) for w in caught)
    assert not (tmp_path / "cache" / name).exists()
    assert load_file(str(root / name / WEIGHTS))  # the good one still loads


def test_cli_commands_pass_no_shipped_vanilla(tmp_path, monkeypatch):
    """run, sweep and sequence take --no-shipped-vanilla (default: the shipped model)."""
    from typer.testing import CliRunner

    import mllm_unlearn.jobs.run as pipeline
    import mllm_unlearn.jobs.sequence as sequence
    import mllm_unlearn.jobs.sweep as sweep
    from mllm_unlearn.cli import app

    seen = []

    def stop(cfg, *args, **kwargs):  # stop before any work: only the configuration is checked
        seen.append(cfg)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(pipeline, "run_pipeline", stop)
    monkeypatch.setattr(sweep, "run_sweep", stop)
    monkeypatch.setattr(sequence, "run_sequence", stop)
    common = ["--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    for command in (["run"], ["sweep", "--method", "ga", "--trials", "1"], ["sequence", "--method", "ga"]):
        for flag, expected in (([], True), (["--no-shipped-vanilla"], False)):
            result = CliRunner().invoke(app, command + common + flag)
            assert "stopped by the test" in result.output, (command, result.output)
            assert seen.pop().shipped_vanilla is expected, command
