"""Membership-inference scores and AUC, pinned on hand-computed cases."""
import itertools
import random

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.eval.mia import (
    MIAConfig,
    membership_inference,
    min_k_score,
    roc_auc,
    sample_scores,
    scores_from_token_nll,
    zlib_entropy,
)
from mllm_unlearn.training.losses import sequence_nll


def test_zlib_entropy_is_the_compressed_length():
    # 2-byte header + 3 literals (8 bits each) + block header (3) + end of block (7) = 34 bits -> 5 bytes + 4-byte Adler-32
    assert zlib_entropy("abc") == 11
    assert zlib_entropy("a" * 40) < zlib_entropy("abc" + "a" * 37)  # repetition compresses


def test_min_k_takes_the_lowest_log_probs_of_answer_tokens_only():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0],
                             [-9.0, -0.5, -1.5, -7.0]])  # row 2: positions 0 and 3 are prompt/padding
    mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    # k=50%: row 1 keeps floor(4*0.5)=2 lowest (-4, -3) -> 3.5; row 2 keeps max(1, floor(1)) = 1 -> 1.5
    assert min_k_score(logprobs, mask, 50).tolist() == pytest.approx([3.5, 1.5])
    # k=10%: at least one token: row 1 -> 4, row 2 -> 1.5
    assert min_k_score(logprobs, mask, 10).tolist() == pytest.approx([4.0, 1.5])
    # k=100%: the mean NLL of the answer tokens
    assert min_k_score(logprobs, mask, 100).tolist() == pytest.approx([2.5, 1.0])


def test_scores_from_token_nll_hand_computed():
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0], [9.0, 0.5, 1.5, 7.0]])
    mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    scores = scores_from_token_nll(nll, mask, ["abc", "abc"], (50,))
    assert scores["loss"] == pytest.approx([2.5, 1.0])
    assert scores["zlib"] == pytest.approx([2.5 / 11, 1.0 / 11])
    assert scores["min_k_50"] == pytest.approx([3.5, 1.5])
    with pytest.raises(ValueError, match="no answer token"):
        scores_from_token_nll(nll, torch.zeros_like(mask), ["a", "b"], (10,))


def test_auc_hand_computed_and_against_pairwise_count():
    # positives 2 and 4 against negatives 1, 2, 3: (1 + 0.5 + 0) + 3 = 4.5 of 6 pairs
    assert roc_auc([1, 2, 3], [2, 4]) == pytest.approx(0.75)
    assert roc_auc([1, 2], [3, 4]) == 1.0 and roc_auc([3, 4], [1, 2]) == 0.0
    assert roc_auc([5, 5], [5]) == 0.5
    rng = random.Random(0)
    neg = [rng.randint(0, 5) for _ in range(40)]
    pos = [rng.randint(2, 8) for _ in range(30)]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert roc_auc(neg, pos) == pytest.approx(pairs / (len(pos) * len(neg)))
    with pytest.raises(ValueError):
        roc_auc([], [1])


def test_sample_scores_use_answer_tokens_of_the_batch(tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    items = benchmark.forget_train[:3] + [i for i in benchmark.forget_train if i.modality == "qa"][:3]
    scores = sample_scores(vlm, items, MIAConfig(batch_size=4, min_k_percents=(100,)))
    batch = Encoder(vlm).batch(items[:4], train=True)
    with torch.no_grad():
        expected = sequence_nll(vlm.model, batch)
    assert scores["loss"][:4] == pytest.approx(expected.tolist(), rel=1e-5)
    assert scores["min_k_100"] == pytest.approx(scores["loss"], rel=1e-5)  # Min-100% is the mean NLL
    assert scores["zlib"][0] == pytest.approx(scores["loss"][0] / zlib_entropy(items[0].answer))


def test_membership_inference_reports_auc_per_attack_and_modality(tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    assert benchmark.holdout and not {i.person_id for i in benchmark.holdout} & set(benchmark.forget_ids)
    result = membership_inference(vlm, benchmark.forget_train, benchmark.holdout, MIAConfig(max_items=12))
    assert set(result["auc"]) == {"loss", "zlib", "min_k_10", "min_k_20"}
    assert all(0.0 <= v <= 1.0 for v in result["auc"].values())
    assert result["counts"] == {"members": 12, "non_members": 12}
    with pytest.raises(ValueError, match="non-member"):
        membership_inference(vlm, benchmark.forget_train, [])
