"""Per-item scores of MLLMU-Bench's three tasks."""
from __future__ import annotations

from functools import lru_cache

from ..data.items import OPTION_KEYS


def parse_letter(response: str, options: tuple[str, ...] = OPTION_KEYS) -> str | None:
    """MLLMU-Bench's rule: the first character of the response, upper-cased, if it is an option key."""
    text = response.strip()
    if not text:
        return None
    letter = text[0].upper()
    return letter if letter in options else None


def cloze_correct(response: str, ground_truth: str) -> bool:
    """Case-insensitive substring match of the ground truth in the response (MLLMU-Bench)."""
    return ground_truth.strip().lower() in response.lower()


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def rouge_l_recall(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].recall)


def bleu(prediction: str, reference: str) -> float:
    """NLTK sentence BLEU on whitespace tokens with smoothing method 1 (MLLMU-Bench's setting)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis = prediction.split()
    if not hypothesis:
        return 0.0
    return float(sentence_bleu([reference.split()], hypothesis, smoothing_function=SmoothingFunction().method1))
