"""The tiny preset = hand-chosen structural options + the sweep-chosen values of tiny_presets.json."""
import json

import pytest

from mllm_unlearn.methods import available_methods, get_method
from mllm_unlearn.methods import defaults
from mllm_unlearn.methods.search_spaces import SEARCH_SPACES


@pytest.fixture
def presets_file(tmp_path, monkeypatch):
    path = tmp_path / "tiny_presets.json"
    monkeypatch.setattr(defaults, "TINY_PRESETS_FILE", path)
    defaults.swept_tiny_values.cache_clear()
    yield path
    defaults.swept_tiny_values.cache_clear()


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
    for method, entry in shipped.items():
        flat = set()
        for key, value in entry["values"].items():
            flat |= {f"extra.{k}" for k in value} if key == "extra" else {key}
        assert flat <= set(SEARCH_SPACES[method]), (method, flat)
        chosen_by = entry["chosen_by"]
        assert "derive_presets.py" in chosen_by["command"] and chosen_by["trials"] >= 1
        assert 0.0 <= chosen_by["objectives"]["retention"] <= 1.0
        get_method(method).check_options(defaults.method_preset(method, defaults.TINY))
