"""CLEAR's metrics pinned on hand-computed cases, and the evaluator's masking and generation."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mllm_unlearn.data import generate_world, load_clear
from mllm_unlearn.data.collate import IGNORE
from mllm_unlearn.eval.clear import (
    ClearEvalConfig,
    ClearEvaluator,
    answer_nll,
    forget_quality,
    harmonic_mean,
    normalized_probability,
    task_truth_ratios,
    truth_ratio,
    truth_ratio_score,
)
from mllm_unlearn.eval.metrics import rouge_l_recall
from mllm_unlearn.jobs.prepare import benchmark_texts
from mllm_unlearn.models.tiny import build_tiny_vlm, words_of

from ..conftest import SMALL_SIZE, SMALL_WORLD


def test_truth_ratio_and_its_task_scores_by_hand():
    # item 0: paraphrase NLL 1, perturbed NLLs 2 and 4 (mean 3) -> TR = e^2
    # item 1: paraphrase NLL 2, perturbed NLLs 1, 1, 1 (mean 1) -> TR = e^-1
    ratios = truth_ratio(np.array([1.0, 2.0]), [[2.0, 4.0], [1.0, 1.0, 1.0]])
    assert ratios == pytest.approx([math.e ** 2, math.e ** -1])
    # forget tasks: mean(min(TR, 1/TR)) = (e^-2 + e^-1) / 2
    assert truth_ratio_score(ratios, forget=True) == pytest.approx((math.e ** -2 + math.e ** -1) / 2)
    # other tasks: mean(max(0, 1 - 1/TR)) = ((1 - e^-2) + max(0, 1 - e)) / 2
    assert truth_ratio_score(ratios, forget=False) == pytest.approx((1 - math.e ** -2) / 2)
    assert truth_ratio_score(np.array([1.0]), forget=True) == 1.0  # indifferent = perfectly forgotten


def test_forget_quality_is_the_ks_p_value_by_hand():
    # Disjoint samples of 3 and 3: D = 1; exact two-sided p = 2 / C(6, 3) = 0.1.
    assert forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx({"forget_quality": 0.1, "ks_statistic": 1.0})
    # Identical distributions: D = 0, p = 1.
    assert forget_quality([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx({"forget_quality": 1.0, "ks_statistic": 0.0})
    # Disjoint samples of 2 and 2: p = 2 / C(4, 2) = 1/3.
    assert forget_quality([0.1, 0.2], [5.0, 6.0])["forget_quality"] == pytest.approx(1 / 3)


def test_normalized_probability_and_harmonic_mean_by_hand():
    # true per-token prob 1, two perturbed at 1/2 each -> 1 / (1 + 1/2 + 1/2) = 0.5
    assert normalized_probability(np.array([0.0]), [[math.log(2), math.log(2)]]) == pytest.approx([0.5])
    # true 1/4, one perturbed 3/4 -> 0.25
    assert normalized_probability(np.array([math.log(4)]), [[math.log(4 / 3)]]) == pytest.approx([0.25])
    assert harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert harmonic_mean([0.9, 0.0, 0.5]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([])


def test_rouge_l_recall_by_hand():
    # LCS("the cat sat", "the cat sat on the mat") = 3 of the reference's 6 words.
    assert rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l_recall("a dog", "the cat sat on the mat") == 0.0


def test_answer_nll_counts_only_answer_labels_by_hand():
    # Vocabulary of 2; where it matters, the logits give p(token 1) = 3/4, p(token 0) = 1/4.
    good = torch.tensor([0.0, math.log(3)])
    logits = torch.randn(2, 5, 2) * 50  # garbage at every position that must not count
    labels = torch.full((2, 5), IGNORE)
    # sequence 0: [prompt, image, image, answer 1, answer 0]: logits at 2 and 3 predict the answer
    logits[0, 2], logits[0, 3] = good, good
    labels[0, 3], labels[0, 4] = 1, 0
    # sequence 1 (left-padded): [pad, pad, prompt, prompt, answer 1]
    logits[1, 3] = good
    labels[1, 4] = 1
    total, count = answer_nll(logits, labels)
    assert count.tolist() == [2, 1]
    assert total.tolist() == pytest.approx([math.log(4 / 3) + math.log(4), math.log(4 / 3)], rel=1e-5)


@pytest.fixture(scope="module")
def clear_benchmark(tmp_path_factory):
    return load_clear(generate_world(tmp_path_factory.mktemp("clear") / "w", SMALL_WORLD, layout="clear"), 10)


@pytest.fixture(scope="module")
def clear_vlm(clear_benchmark):
    return build_tiny_vlm("llava", words_of(benchmark_texts(clear_benchmark)), SMALL_SIZE, seed=0)


def test_answer_nlls_match_a_manual_pass_and_ignore_padding_image_and_question(clear_benchmark, clear_vlm):
    evaluator = ClearEvaluator(clear_vlm, ClearEvalConfig(batch_size=8, progress=False))
    short = clear_benchmark.eval_splits["forget_facerec"][0]  # name answer: a short sequence
    long = clear_benchmark.eval_splits["forget"][0]  # caption answer: pads the short one in a batch
    alone = evaluator.answer_nlls([short])[0]
    batched = evaluator.answer_nlls([long, short])[1]
    assert batched == pytest.approx(alone, abs=1e-5)  # left padding changes nothing

    # By hand: the answer ids sit at the end of the sequence; average their NLL and nothing else.
    example = evaluator.encoder.training_example(short)
    answer_ids = evaluator.encoder.answer_ids(short.answer)
    with torch.no_grad():
        logits = clear_vlm.model(**{k: v for k, v in example.items() if k != "labels"}).logits[0]
    ids = example["input_ids"][0]
    start = len(ids) - len(answer_ids)
    assert ids[start:].tolist() == answer_ids
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    manual = -sum(float(logprobs[t - 1, ids[t]]) for t in range(start, len(ids))) / len(answer_ids)
    assert alone == pytest.approx(manual, rel=1e-5)
    # The image tokens and the question are in the sequence but not in the labels.
    image_id = clear_vlm.processor.tokenizer.convert_tokens_to_ids(clear_vlm.adapter.image_placeholder)
    assert (ids[:start] == image_id).any() and (example["labels"][0][:start] == IGNORE).all()


def test_generation_for_rouge_sees_the_image(clear_benchmark, clear_vlm, monkeypatch):
    seen = []
    original = clear_vlm.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(clear_vlm.model, "generate", spy)
    evaluator = ClearEvaluator(clear_vlm, ClearEvalConfig(batch_size=8, max_new_tokens=3, progress=False))
    items = clear_benchmark.eval_splits["forget"][:2]
    records = evaluator.score_task(items, "forget")
    assert seen and all("pixel_values" in kwargs for kwargs in seen)  # the released code passed no image
    assert all("rougeL_recall" in r and 0.0 <= r["rougeL_recall"] <= 1.0 for r in records)


def test_task_scores_and_forget_quality_from_records(clear_benchmark, clear_vlm):
    cfg = ClearEvalConfig(batch_size=16, max_new_tokens=2, max_items_per_task=3, rouge=False, progress=False)
    evaluator = ClearEvaluator(clear_vlm, cfg)
    results = evaluator.evaluate(clear_benchmark)
    records = [p for p in results["predictions"] if p["split"] == "forget"]
    assert len(records) == 3
    for record in records:
        expected = math.exp(np.mean(record["perturbed_nll"]) - record["paraphrase_nll"])
        assert record["truth_ratio"] == pytest.approx(expected)
        assert record["prob"] == pytest.approx(math.exp(-record["answer_nll"]))  # caption task: unnormalised
    facerec = [p for p in results["predictions"] if p["split"] == "forget_facerec"]
    assert all(r["paraphrase_nll"] == r["answer_nll"] for r in facerec)  # the name is its own paraphrase
    for record in facerec:
        probs = np.exp(-np.array([record["answer_nll"], *record["perturbed_nll"]]))
        assert record["prob"] == pytest.approx(probs[0] / probs.sum())
    cell = results["figures"]["retain"]["vqa"]
    retained = [p for p in results["predictions"] if p["split"] == "retain"]
    assert cell["truth_ratio"] == pytest.approx(np.mean([max(0, 1 - 1 / r["truth_ratio"]) for r in retained]))
    utility = [c[m] for t, by in results["figures"].items() if not t.startswith("forget") for c in by.values()
               for m in ("prob", "truth_ratio")]
    assert len(utility) == 8  # 4 non-forget tasks x (Prob, truth ratio); ROUGE was off
    assert results["summary"]["model_utility"] == pytest.approx(harmonic_mean(utility))
    assert "forget_quality" not in results["summary"]  # no gold model given

    # Against a gold model's results: the KS p-value of the two forget-caption TR samples.
    gold = {"predictions": [dict(p, truth_ratio=p["truth_ratio"] * 10) for p in results["predictions"]]}
    summary = ClearEvaluator.summary(results["figures"], results["predictions"], gold)
    expected = forget_quality(task_truth_ratios(results["predictions"], "forget"), task_truth_ratios(gold["predictions"], "forget"))
    assert summary["forget_quality"] == pytest.approx(expected["forget_quality"])
    assert summary["ks_statistic"] == pytest.approx(expected["ks_statistic"])
    same = ClearEvaluator.summary(results["figures"], results["predictions"], results)
    assert same["forget_quality"] == pytest.approx(1.0) and same["ks_statistic"] == 0.0


def test_items_without_perturbations_are_refused(clear_benchmark, clear_vlm):
    item = replace(clear_benchmark.eval_splits["forget"][0], perturbed_answers=None)
    with pytest.raises(ValueError, match="lacks a paraphrased or perturbed answer"):
        ClearEvaluator(clear_vlm, ClearEvalConfig(progress=False)).score_task([item], "forget")


def test_generation_length_is_clears_300_and_stops_at_end_of_sequence(clear_benchmark, clear_vlm, monkeypatch):
    from mllm_unlearn.eval import EvalConfig
    from mllm_unlearn.jobs.run import clear_eval_config

    assert ClearEvalConfig().max_new_tokens == 300  # CLEAR's mm/eval.py
    assert clear_eval_config(EvalConfig()).max_new_tokens == 300  # a run's default on CLEAR: CLEAR's own
    assert clear_eval_config(EvalConfig(max_new_tokens=8)).max_new_tokens == 8  # a given length is kept
    # A model whose greedy choice is always the end of sequence: generation stops after one token.
    config = clear_vlm.model.config.get_text_config()
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[clear_vlm.model.generation_config.eos_token_id] = 1.0
    monkeypatch.setattr(clear_vlm.model, "lm_head", head)
    lengths = []
    original = clear_vlm.model.generate

    def spy(**kwargs):
        out = original(**kwargs)
        lengths.append((kwargs["max_new_tokens"], out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(clear_vlm.model, "generate", spy)
    records = ClearEvaluator(clear_vlm, ClearEvalConfig(progress=False)).score_task(clear_benchmark.eval_splits["forget"][:2],
                                                                                   "forget")
    assert lengths == [(300, 1)] and all(r["prediction"] == "" for r in records)


def test_the_knowledge_checks_forget_evaluation_generates_face_recognition_only(clear_benchmark):
    """The check reads the name a face-recognition generation says (eval/knowledge.py: clear_item_right),
    so the forget evaluation generates those (short) answers where the run generates, not the captions."""
    from dataclasses import replace as replace_

    from mllm_unlearn.eval.knowledge import forget_evaluation

    # A model of its own: earlier tests patch the shared one's head.
    clear_vlm = build_tiny_vlm("llava", words_of(benchmark_texts(clear_benchmark)), SMALL_SIZE, seed=0)

    view = replace_(clear_benchmark, eval_splits={t: items[:2] for t, items in clear_benchmark.eval_splits.items()})
    evaluator = ClearEvaluator(clear_vlm, ClearEvalConfig(batch_size=8, max_new_tokens=3, progress=False))
    records = forget_evaluation(evaluator, view, ("vqa",))["predictions"]
    assert {r["split"] for r in records} == {"forget", "forget_facerec"}
    assert all(("prediction" in r) == (r["split"] == "forget_facerec") for r in records)
    quiet = ClearEvaluator(clear_vlm, ClearEvalConfig(batch_size=8, rouge=False, progress=False))
    assert not any("prediction" in r for r in forget_evaluation(quiet, view, ("vqa",))["predictions"])
