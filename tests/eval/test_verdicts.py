"""The three verdicts (still known, forgotten, undetermined) and the binomial test's power behind them."""
import pytest

from mllm_unlearn.eval.verdicts import (
    FORGOTTEN,
    STILL_KNOWN,
    UNDETERMINED,
    combine,
    counts,
    fewest_still_known,
    p_above_chance,
    per_person_verdicts,
    power,
    verdict,
)


def test_the_binomial_test_and_its_power_at_four_and_five_questions():
    # 4 questions at chance 25%: 3 of 4 has p = 0.051, so only 4 of 4 is still known.
    assert p_above_chance(3, 4, 25.0) == pytest.approx(0.05078125)
    assert p_above_chance(4, 4, 25.0) == pytest.approx(0.25 ** 4)
    assert fewest_still_known(4, 25.0) == 4 and fewest_still_known(5, 25.0) == 4
    assert power(4, 25.0, 75.0) == pytest.approx(0.75 ** 4)  # 0.32
    assert power(5, 25.0, 95.0) == pytest.approx(5 * 0.95 ** 4 * 0.05 + 0.95 ** 5)
    # One question at chance 1/14 (7.1%): a hit is never significant, so the test has no power at all.
    assert fewest_still_known(1, 100 / 14) is None and power(1, 100 / 14, 100.0) == 0.0


def test_four_questions_at_a_vanilla_recall_of_75_percent_cannot_show_forgetting():
    """The issue's case: even 0 of 4 right is undetermined (a person still known at 75% misses 4 of 4
    two times in three); at a recall of 95% the test has power 0.81 and 0 of 4 is forgotten."""
    low = verdict(0, 4, 25.0, 75.0)
    assert low["verdict"] == UNDETERMINED and low["power"] == pytest.approx(0.316, abs=1e-3)
    assert "power 0.32 < 0.8" in low["reason"]
    assert verdict(0, 4, 25.0, 95.0)["verdict"] == FORGOTTEN
    assert verdict(4, 4, 25.0, 75.0)["verdict"] == STILL_KNOWN
    assert verdict(3, 4, 25.0, 95.0)["verdict"] == FORGOTTEN  # p = 0.051 at chance: not still known
    # No recall level to test against (no vanilla model measured): never forgotten.
    assert verdict(0, 5, 25.0, None)["verdict"] == UNDETERMINED
    # A name probe at chance 7.1%, the vanilla model naming 75%: a miss proves nothing, a hit neither.
    assert verdict(0, 1, 100 / 14, 75.0)["verdict"] == UNDETERMINED
    assert verdict(1, 1, 100 / 14, 75.0)["verdict"] == UNDETERMINED


def test_combining_probes_never_defaults_to_forgotten():
    forgotten, still, undetermined = ({"verdict": v} for v in (FORGOTTEN, STILL_KNOWN, UNDETERMINED))
    assert combine({}) == (UNDETERMINED, {FORGOTTEN: [], STILL_KNOWN: [], UNDETERMINED: []})
    assert combine({"a": undetermined, "b": undetermined})[0] == UNDETERMINED
    assert combine({"a": forgotten, "b": undetermined})[0] == FORGOTTEN
    assert combine({"a": forgotten, "b": still}) == (STILL_KNOWN, {FORGOTTEN: ["a"], STILL_KNOWN: ["b"], UNDETERMINED: []})
    assert counts([FORGOTTEN, FORGOTTEN, UNDETERMINED]) == {FORGOTTEN: 2, STILL_KNOWN: 0, UNDETERMINED: 1}


def test_per_person_verdicts_test_against_the_vanilla_models_own_recall():
    def records(person, modality, right, total, split="forget"):
        return [{"split": split, "task": "mcq", "modality": modality, "person_id": person, "correct": k < right}
                for k in range(total)]

    vanilla = records("001", "vqa", 5, 5) + records("002", "vqa", 5, 5) + records("001", "qa", 3, 4) + \
        records("002", "qa", 3, 4) + records("009", "vqa", 5, 5, split="retain")
    unlearned = records("001", "vqa", 1, 5) + records("002", "vqa", 4, 5) + records("001", "qa", 0, 4) + \
        records("002", "qa", 4, 4)
    out = per_person_verdicts(unlearned, vanilla, 25.0)
    assert set(out) == {"001", "002"}  # the retain split is left out
    assert out["001"]["vqa"]["verdict"] == FORGOTTEN and out["001"]["vqa"]["power"] == pytest.approx(1.0)
    assert out["002"]["vqa"]["verdict"] == STILL_KNOWN
    assert out["001"]["qa"]["verdict"] == UNDETERMINED  # QA recall 75% on 4 questions: power 0.32
    assert out["002"]["qa"]["verdict"] == STILL_KNOWN
    assert (out["001"]["qa"]["right"], out["001"]["qa"]["questions"]) == (0, 4)
