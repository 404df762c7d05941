"""Chance-corrected forget efficacy, retention and their harmonic mean."""
import pytest

from mllm_unlearn.eval.tradeoff import CHANCE_ACCURACY, forget_efficacy, harmonic_mean, overall, retention, tradeoff


def test_forget_efficacy_is_chance_corrected_and_clipped():
    assert CHANCE_ACCURACY == 25.0  # four options
    assert forget_efficacy(96.0, 96.0) == 0.0  # nothing forgotten
    assert forget_efficacy(25.0, 96.0) == 1.0  # at chance: fully forgotten
    assert forget_efficacy(60.5, 96.0) == pytest.approx(0.5)  # half-way from vanilla to chance
    assert forget_efficacy(5.0, 96.0) == 1.0  # below chance earns nothing more (1 - acc/vanilla would give 0.95)
    assert forget_efficacy(99.0, 96.0) == 0.0  # better than vanilla: clipped at 0
    assert forget_efficacy(40.0, 90.0, chance=50.0) == 1.0  # two options
    assert forget_efficacy(20.0, 25.0) is None and forget_efficacy(10.0, 20.0) is None  # vanilla not above chance


def test_retention_is_clipped_and_harmonic_mean_needs_both():
    assert retention(49.0, 98.0) == pytest.approx(0.5)
    assert retention(99.0, 98.0) == 1.0  # above vanilla: clipped
    assert retention(10.0, 0.0) is None
    assert harmonic_mean(1.0, 1.0) == 1.0 and harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(1.0, 0.0) == 0.0 and harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3)
    assert harmonic_mean(None, 1.0) is None


def test_tradeoff_per_modality_from_figures():
    def figures(forget, test, retain, real):
        return {split: {"vqa": {"mcq_accuracy": value}, "qa": {"mcq_accuracy": value}}
                for split, value in (("forget", forget), ("test", test), ("retain", retain), ("real_world", real))}

    vanilla, unlearned = figures(95.0, 85.0, 100.0, 80.0), figures(25.0, 55.0, 90.0, 80.0)
    table = tradeoff(vanilla, unlearned)
    assert set(table) == {"vqa", "qa"}
    cell = table["vqa"]
    assert cell["forget_efficacy"] == 1.0 and cell["test_efficacy"] == pytest.approx(0.5)
    assert cell["retain_retention"] == pytest.approx(0.9) and cell["real_world_retention"] == 1.0
    assert cell["retention"] == pytest.approx(0.95)
    assert cell["harmonic_mean"] == pytest.approx(2 * 0.95 / 1.95)
    assert overall(table) == pytest.approx({"forget_efficacy": 1.0, "retention": 0.95,
                                            "harmonic_mean": 2 * 0.95 / 1.95})
    only_forget = tradeoff({"forget": vanilla["forget"]}, {"forget": unlearned["forget"]})
    assert only_forget["qa"] == {"forget_efficacy": 1.0, "retention": None, "harmonic_mean": None}
