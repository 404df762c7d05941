"""The tiny preset = hand-chosen structural options + the sweep-chosen values of tiny_presets.json."""
import json

import pytest

from mllm_unlearn.methods import available_methods, defaults, get_method
from mllm_unlearn.methods.search_spaces import search_space
from mllm_unlearn.models import adapter_for_family


@pytest.fixture
def presets_file(tmp_path, monkeypatch):
    path = tmp_path / "tiny_presets.json"
    monkeypatch.setattr(defaults, "TINY_PRESETS_FILE", path)
    defaults.tiny_preset_entries.cache_clear()
    yield path
    defaults.tiny_preset_entries.cache_clear()


def test_swept_values_go_over_the_structural_defaults(presets_file):
    presets_file.write_text(json.dumps({"rmu": {"values": {"lr": 0.004, "extra": {"alpha": 7.0}}, "chosen_by": {}}}))
    cfg = defaults.method_preset("rmu", defaults.TINY)
    assert cfg.lr == 0.004 and cfg.extra["alpha"] == 7.0
    # extra is merged key by key: the structural options the sweep does not search stay
    assert cfg.extra["positions"] == defaults.TINY_DEFAULTS["rmu"]["extra"]["positions"]
    assert cfg.epochs == defaults.TINY_DEFAULTS["rmu"]["epochs"]
    # the papers' preset is untouched
    assert defaults.method_preset("rmu", defaults.PAPER).lr == defaults.PAPER_DEFAULTS["rmu"]["lr"]
    # the module's table itself is not changed by the overlay
    assert defaults.TINY_DEFAULTS["rmu"]["lr"] == 2e-3


def test_a_familys_own_choice_goes_over_its_runs_only(presets_file, tmp_path):
    presets_file.write_text(json.dumps({"mllmeraser": {
        "values": {"extra": {"strength": 7.0, "retain_penalty": 50.0}}, "chosen_by": {},
        "families": {"qwen2.5-vl": {"values": {"extra": {"strength": 30.0}}, "chosen_by": {}}}}}))
    assert defaults.method_preset("mllmeraser", defaults.TINY, family="qwen2.5-vl").extra["strength"] == 30.0
    for family in (None, "llava", "qwen2-vl"):  # no choice of its own: the default family's
        assert defaults.method_preset("mllmeraser", defaults.TINY, family=family).extra["strength"] == 7.0
    # a family's entry replaces the default choice as a whole, not key by key
    assert (defaults.method_preset("mllmeraser", defaults.TINY, family="qwen2.5-vl").extra["retain_penalty"]
            == defaults.TINY_DEFAULTS["mllmeraser"]["extra"]["retain_penalty"])
    # the pipeline picks the family of the run, or the one a checkpoint built here recorded
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.presets import resolve_method_config
    from mllm_unlearn.recipes.inject import INJECTION_META

    assert resolve_method_config(RunConfig(method="mllmeraser", method_cfg=None, family="qwen2.5-vl"))[0].extra["strength"] == 30.0
    assert resolve_method_config(RunConfig(method="mllmeraser", method_cfg=None))[0].extra["strength"] == 7.0
    checkpoint = tmp_path / "vanilla"
    checkpoint.mkdir()
    (checkpoint / INJECTION_META).write_text(json.dumps({"family": "qwen2.5-vl"}))
    cfg, preset = resolve_method_config(RunConfig(method="mllmeraser", method_cfg=None, model=str(checkpoint)))
    assert preset == defaults.TINY and cfg.extra["strength"] == 30.0
    # which family's sweeps chose them, as results.json and the report record it
    assert defaults.swept_choice_family("mllmeraser", "qwen2.5-vl") == "qwen2.5-vl"
    assert defaults.swept_choice_family("mllmeraser", "qwen2-vl") == defaults.PRESET_FAMILY
    assert defaults.swept_choice_family("ga", "qwen2.5-vl") is None  # no choice: the structural defaults


def test_without_a_presets_file_the_structural_defaults_stand(presets_file):
    assert not presets_file.exists()
    assert defaults.method_preset("ga", defaults.TINY).lr == defaults.TINY_DEFAULTS["ga"]["lr"]


def test_shipped_presets_are_valid_and_record_their_choice():
    """Every entry of the package's file names a known method, sets only searched options, passes the
    method's own option checks, and records how it was chosen (command, rule, validation objectives)."""
    if not defaults.TINY_PRESETS_FILE.is_file():
        pytest.fail(f"{defaults.TINY_PRESETS_FILE} is missing (benchmarks/derive_presets.py writes it)")
    shipped = json.loads(defaults.TINY_PRESETS_FILE.read_text())
    assert set(shipped) <= set(available_methods())
    for method, default_choice in shipped.items():
        families = default_choice.get("families", {})
        assert defaults.PRESET_FAMILY not in families, method
        for family in families:
            adapter_for_family(family)  # a known model family
        for family, entry in [(defaults.PRESET_FAMILY, default_choice), *families.items()]:
            flat = set()
            for key, value in entry["values"].items():
                flat |= {f"extra.{k}" for k in value} if key == "extra" else {key}
            assert flat <= set(search_space(method)), (method, family, flat)
            chosen_by = entry["chosen_by"]
            assert "derive_presets.py" in chosen_by["command"] and chosen_by["trials"] >= 1
            assert f"--family {family}" in chosen_by["command"], (method, family, chosen_by["command"])
            assert 0.0 <= chosen_by["objectives"]["retention"] <= 1.0
            get_method(method).check_options(defaults.method_preset(method, defaults.TINY, family=family))
