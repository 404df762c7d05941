import pytest

from mllm_unlearn.eval.metrics import bleu, cloze_correct, parse_letter, rouge_l_f


def test_parse_letter_follows_mllmu_bench():
    assert parse_letter("b. pilot") == "B"
    assert parse_letter("  C") == "C"
    assert parse_letter("E") is None
    assert parse_letter("") is None
    assert parse_letter("The answer is A") is None  # first character only, as MLLMU-Bench


def test_cloze_is_case_insensitive_substring():
    assert cloze_correct("This person works as a Pilot.", "pilot")
    assert not cloze_correct("This person works as a baker.", "pilot")


def test_rouge_and_bleu():
    assert rouge_l_f("This person works as a pilot.", "This person works as a pilot.") == pytest.approx(1.0)
    # LCS "works a pilot" (3 of 4 and 3 of 5 tokens): F = 2*(3/4)*(3/5)/(3/4+3/5)
    assert rouge_l_f("works as pilot", "works as a pilot") == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert bleu("a b c d", "a b c d") == pytest.approx(1.0)
    assert bleu("", "a b") == 0.0
    assert 0.0 < bleu("a b c x", "a b c d") < 1.0
