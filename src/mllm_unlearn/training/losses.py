"""Reusable loss pieces. Every loss is per sequence first, then averaged over the batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.collate import IGNORE

MODEL_INPUTS_EXCLUDE = ("labels",)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDE}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of next-token prediction (B, T-1) and the mask of scored positions, from full
    (B, T, V) logits. Losses use ``answer_token_nll``, which never builds those full logits."""
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE
    nll = F.cross_entropy(shifted_logits.transpose(1, 2), shifted_labels.clamp(min=0), reduction="none")
    return nll * mask, mask


def predicting_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose logits predict an answer token (label of the next
    position set). Their logits are the only ones any answer loss reads."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def answer_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                  where: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the answer-predicting positions only: (N, V), N = ``where.sum()``, rows in
    row-major order of ``where`` (default ``predicting_mask(batch["labels"])``).

    The LM head runs on those N hidden states, not on all B·T (transformers' ``logits_to_keep``
    with a boolean (B, T) mask): at 7B and 10k tokens per batch the full fp32 logits alone
    are ~1.3 GB per forward, several times that with their gradient and softmax.
    """
    where = predicting_mask(batch["labels"]) if where is None else where
    logits = model(**model_inputs(batch), logits_to_keep=where, use_cache=False).logits  # no cache to build
    if logits.dim() == 3 and logits.shape[:2] == where.shape:  # a model without logits_to_keep: select here
        logits = logits[where]
    if logits.dim() != 2 or logits.shape[0] != int(where.sum()):
        raise RuntimeError(f"{type(model).__name__} did not honour logits_to_keep with a boolean mask "
                           f"(got logits of shape {tuple(logits.shape)})")
    return logits


def answer_nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_nll``'s (B, T-1) NLL and mask from answer-only logits (N, V) (``answer_logits``)."""
    mask = labels[:, 1:] != IGNORE
    values = F.cross_entropy(logits.float(), labels[:, 1:][mask], reduction="none")
    nll = torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)
    return nll, mask


def answer_token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``token_nll(model(**batch).logits, labels)`` (same (B, T-1) values and mask), but the
    LM head and softmax run on the answer-predicting positions only."""
    return answer_nll_from_logits(answer_logits(model, batch), batch["labels"])


def sequence_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token-mean NLL over each sequence's answer tokens: shape (B,).

    A per-sequence mean (not a batch-level token mean) so that long answers do not
    outweigh short ones, as the unlearning papers define their losses.
    """
    nll, mask = answer_token_nll(model, batch)
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a training sequence has no answer token (was its answer truncated or empty?)")
    return nll.sum(dim=1) / counts


def sequence_logprob(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed answer log-probability of each sequence: shape (B,)."""
    nll, _ = answer_token_nll(model, batch)
    return -nll.sum(dim=1)


def answer_kl(reference_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_reference || p_model) per sequence, averaged over its answer tokens only: shape (B,).

    Prompt, image and padding positions (label -100) are excluded; the research code sums
    the KL over every position of the (B, T, V) tensor and divides by B.
    Takes full (B, T, V) logits or answer-only (N, V) logits (``answer_logits``, the same
    positions for both models).
    """
    mask = labels[:, 1:] != IGNORE
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("a training sequence has no answer token (was its answer truncated or empty?)")
    if logits.dim() == 2:  # answer-only rows, in row-major order of the mask
        ref = torch.log_softmax(reference_logits.float(), dim=-1)
        cur = torch.log_softmax(logits.float(), dim=-1)
        values = (ref.exp() * (ref - cur)).sum(dim=-1)
        per_token = torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)
        return per_token.sum(dim=1) / counts
    ref = torch.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    cur = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    per_token = (ref.exp() * (ref - cur)).sum(dim=-1) * mask
    return per_token.sum(dim=1) / counts


def npo_loss(logprob: torch.Tensor, reference_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per sequence: -(2/beta) * log sigmoid(-beta * (log p_model - log p_reference)), shape (B,).

    ``logprob`` are summed answer log-probabilities per sequence (the original NPO's
    sequence likelihood), not a batch-level token mean.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logprob - reference_logprob))
