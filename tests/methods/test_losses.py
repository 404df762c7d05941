import pytest
import torch

from mllm_unlearn.data.collate import IGNORE
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.training.losses import sequence_nll


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are given, to pin losses by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, **inputs):
        return type("Out", (), {"logits": self.logits})()


def test_sequence_nll_is_a_per_sequence_token_mean():
    vocab = 3
    logits = torch.zeros(2, 4, vocab)
    logits[0, 1, 2] = 2.0  # first sequence, predicting position 2
    labels = torch.tensor([[IGNORE, IGNORE, 2, 1], [IGNORE, 0, 0, 0]])
    model = FixedLogits(logits)
    nll = sequence_nll(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": labels})
    lse = torch.logsumexp(torch.tensor([0.0, 0.0, 2.0]), 0)
    expected0 = ((lse - 2.0) + torch.log(torch.tensor(3.0))) / 2
    expected1 = torch.log(torch.tensor(3.0))  # 3 answer tokens, uniform: the mean, not the sum
    assert nll[0].item() == pytest.approx(expected0.item(), rel=1e-5)
    assert nll[1].item() == pytest.approx(expected1.item(), rel=1e-5)


def test_ga_and_graddiff_losses():
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2, 3], [IGNORE, IGNORE, IGNORE, 0, 1]])
    batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long), "labels": labels}
    model = FixedLogits(logits)
    nll = sequence_nll(model, batch).mean()
    cfg = MethodConfig(retain_weight=0.5)
    assert get_method("ga").loss(model, {"forget": batch}, cfg).item() == pytest.approx(-nll.item())
    other = {"input_ids": batch["input_ids"], "labels": torch.tensor([[IGNORE, 0, 0, 0, 0], [IGNORE, 1, 1, 1, 1]])}
    retain = sequence_nll(model, other).mean()
    value = get_method("graddiff").loss(model, {"forget": batch, "retain": other}, cfg).item()
    assert value == pytest.approx(-nll.item() + 0.5 * retain.item(), rel=1e-5)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="unknown method 'nope'.*ga.*graddiff"):
        get_method("nope")


def test_answer_kl_ignores_prompt_image_and_padding_positions():
    from mllm_unlearn.training.losses import answer_kl

    torch.manual_seed(0)
    reference = torch.randn(2, 5, 4)
    current = torch.randn(2, 5, 4)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 1, 2], [IGNORE, IGNORE, 3, 0, IGNORE]])
    # Perturbing logits at positions whose next token is not an answer token changes nothing.
    moved = current.clone()
    moved[0, 0] += 5.0
    moved[0, 1] -= 3.0
    moved[1, 0] += 7.0
    moved[1, 4] += 9.0  # the last position predicts nothing
    assert torch.allclose(answer_kl(reference, current, labels), answer_kl(reference, moved, labels))

    def kl(p_logits, q_logits):
        p = torch.softmax(p_logits, -1)
        return float((p * (torch.log(p) - torch.log_softmax(q_logits, -1))).sum())

    expected0 = (kl(reference[0, 2], current[0, 2]) + kl(reference[0, 3], current[0, 3])) / 2
    expected1 = (kl(reference[1, 1], current[1, 1]) + kl(reference[1, 2], current[1, 2])) / 2
    value = answer_kl(reference, current, labels)
    assert value[0].item() == pytest.approx(expected0, rel=1e-5)
    assert value[1].item() == pytest.approx(expected1, rel=1e-5)
    assert answer_kl(reference, reference, labels).abs().max().item() < 1e-6


def test_npo_loss_matches_hand_computed_values():
    import math

    from mllm_unlearn.training.losses import npo_loss

    logprob = torch.tensor([-2.0, -10.0])
    reference = torch.tensor([-2.0, -4.0])
    beta = 0.4
    value = npo_loss(logprob, reference, beta)
    # Equal likelihoods: -(2/beta) log sigmoid(0) = (2/beta) log 2.
    assert value[0].item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # log-ratio -6: -(2/0.4) * log sigmoid(2.4)
    assert value[1].item() == pytest.approx(-(2 / beta) * math.log(1 / (1 + math.exp(-2.4))), rel=1e-6)
    # As beta -> 0 NPO tends to gradient ascent on the log-ratio: the gradient is 1 per sequence.
    lp = torch.tensor([-3.0], requires_grad=True)
    npo_loss(lp, torch.tensor([-3.0]), 1e-4).sum().backward()
    assert lp.grad.item() == pytest.approx(1.0, rel=1e-3)
