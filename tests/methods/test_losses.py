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
