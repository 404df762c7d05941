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
        return {split: {"vqa": {"mcq_accuracy": value, "mcq_count": 20}, "qa": {"mcq_accuracy": value, "mcq_count": 20}}
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
    assert {k: only_forget["qa"][k] for k in ("forget_efficacy", "retention", "harmonic_mean")} == \
        {"forget_efficacy": 1.0, "retention": None, "harmonic_mean": None}
    assert cell["items"]["forget"] == {"vanilla": 20, "unlearned": 20} and cell["not_measurable"] == {}


def test_no_tradeoff_figure_on_a_vanilla_figure_not_significantly_above_chance():
    """The issue's case: the vanilla's retain accuracy below chance (23.6%) would clip retention into a
    perfect 1.00, and a forget accuracy of 7 of 16 (43.8%) is not significantly above chance 25%
    (binomial p = 0.080): neither is measurable, and the harmonic mean neither."""
    def cell(accuracy, count):
        return {"vqa": {"mcq_accuracy": accuracy, "mcq_count": count}}

    vanilla = {"forget": cell(43.75, 16), "test": cell(75.0, 16), "retain": cell(23.6, 72), "real_world": cell(30.0, 10)}
    unlearned = {"forget": cell(43.75, 16), "test": cell(50.0, 16), "retain": cell(30.0, 72), "real_world": cell(30.0, 10)}
    table = tradeoff(vanilla, unlearned, modalities=("vqa",))["vqa"]
    assert table["forget_efficacy"] is None and table["retain_retention"] is None
    assert table["real_world_retention"] is None and table["retention"] is None and table["harmonic_mean"] is None
    assert table["test_efficacy"] == pytest.approx(0.5)  # 12 of 16 at chance 25%: p < 0.001
    assert table["vanilla_p_value"]["forget"] == pytest.approx(0.0796, abs=1e-4)
    reasons = table["not_measurable"]
    assert set(reasons) == {"forget_efficacy", "retain_retention", "real_world_retention", "retention", "harmonic_mean"}
    assert "43.8% (7/16) is not significantly above chance 25.0%" in reasons["forget_efficacy"]
    assert overall({"vqa": table}) == {"forget_efficacy": None, "retention": None, "harmonic_mean": None}
    # Without an item count nothing can be tested: not measurable either.
    bare = tradeoff({"forget": {"vqa": {"mcq_accuracy": 95.0}}}, {"forget": {"vqa": {"mcq_accuracy": 25.0}}},
                    modalities=("vqa",))["vqa"]
    assert bare["forget_efficacy"] is None and "no item count" in bare["not_measurable"]["forget_efficacy"]


def test_the_report_says_not_measurable_with_the_reason():
    from mllm_unlearn.report.markdown import tradeoff_markdown

    vanilla = {"forget": {"qa": {"mcq_accuracy": 25.0, "mcq_count": 40}}, "retain": {"qa": {"mcq_accuracy": 90.0, "mcq_count": 40}}}
    unlearned = {"forget": {"qa": {"mcq_accuracy": 20.0, "mcq_count": 40}}, "retain": {"qa": {"mcq_accuracy": 99.0, "mcq_count": 40}}}
    text = "\n".join(tradeoff_markdown({"tradeoff": tradeoff(vanilla, unlearned, modalities=("qa",))}))
    assert "| QA (text only) | not measurable | – | 1.00 | – | not measurable |" in text
    assert "QA (text only): not measurable: forget efficacy: the vanilla model's accuracy 25.0% (10/40)" in text
    assert "QA (text only) items (vanilla / unlearned): Forget 40 / 40, Retain 40 / 40." in text
