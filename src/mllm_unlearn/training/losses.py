"""Reusable loss pieces. Every loss is per sequence first, then averaged over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE

MODEL_INPUTS_EXCLUDE = ("labels",)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDE}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of next-token prediction (B, T-1) and the mask of scored positions."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE
    nll = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels.clamp(min=0), reduction="none")
    return nll * mask, mask


def sequence_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean NLL over each sequence's answer tokens: shape (B,).

    A per-sequence mean (not a batch-level token mean) so that long answers do not
    outweigh short ones, as the unlearning papers define their losses.
    """
    logits = model(**model_inputs(batch)).logits
    nll, mask = token_nll(logits, batch["labels"])
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a training sequence has no answer token (was its answer truncated or empty?)")
    return nll.sum(dim=1) / counts


def sequence_logprob(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed answer log-probability of each sequence: shape (B,)."""
    logits = model(**model_inputs(batch)).logits
    nll, _ = token_nll(logits, batch["labels"])
    return -nll.sum(dim=1)


def answer_kl(reference_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_reference || p_model) per sequence, averaged over its answer tokens only: shape (B,).

    Prompt, image and padding positions (label -100) are excluded; the research code sums
    the KL over every position of the (B, T, V) tensor and divides by B.
    """
    mask = labels[:, 1:] != IGNORE
    ref = torch.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    cur = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = (ref.exp() * (ref - cur)).sum(dim=-1) * mask
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a training sequence has no answer token (was its answer truncated or empty?)")
    return per_token.sum(dim=1) / counts


def npo_loss(logprob: torch.Tensor, reference_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per sequence: -(2/beta) * log sigmoid(-beta * (log p_model - log p_reference)), shape (B,).

    ``logprob`` are summed answer log-probabilities per sequence (the original NPO's
    sequence likelihood), not a batch-level token mean.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logprob - reference_logprob))
