"""Membership inference on forget (member) vs held-out (non-member) items: LOSS, zlib, Min-K% prob.

Every attack gives each item a *non-membership* score (higher = looks less like training
data) computed on the answer tokens only (prompt, image and padding positions are masked by
the collate labels). The AUC is P(score(held-out item) > score(forget item)), ties counted
half, as OpenUnlearning and MUSE report it: about 1.0 when the model still tells its forget
data from unseen data (the vanilla model), about 0.5 when it cannot (the goal of unlearning,
what a model never trained on the forget people gives), well below 0.5 when unlearning
overshot and the forget data now looks *less* familiar than data never seen.

- LOSS (Yeom et al. 2018): mean answer-token NLL.
- zlib (Carlini et al. 2021): mean answer-token NLL / zlib entropy of the answer text (bytes of
  ``zlib.compress``), so answers that are simply easy to predict do not look like members.
- Min-K% prob (Shi et al. 2024): minus the mean log-probability of the k% least likely answer
  tokens (at least one token), which ignores tokens any model predicts well.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data.collate import Encoder
from ..data.items import Benchmark, Item
from ..models.base import VLM
from ..training.losses import answer_token_nll

ATTACKS = ("loss", "zlib")  # plus one "min_k_<k>" per MIAConfig.min_k_percents


@dataclass
class MIAConfig:
    batch_size: int = 32
    min_k_percents: tuple[int, ...] = (10, 20)
    max_items: int | None = None  # per side (members / non-members), seeded subsample

    def __post_init__(self) -> None:
        bad = [k for k in self.min_k_percents if not 0 < k <= 100]
        if bad:
            raise ValueError(f"min_k_percents must lie in (0, 100], got {bad}")


def zlib_entropy(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (Carlini et al.'s zlib entropy)."""
    return len(zlib.compress(text.encode("utf-8")))


def min_k_score(token_logprobs: torch.Tensor, mask: torch.Tensor, k_percent: float) -> torch.Tensor:
    """Min-K% prob per row: −mean of the ``max(1, floor(n·k/100))`` lowest log-probs among the
    ``n`` masked-in tokens of that row. ``token_logprobs`` and ``mask``: (B, T); returns (B,)."""
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("an item has no answer token to score (empty or truncated answer?)")
    # Masked-out positions sort last (+inf), so the first k of each row are its lowest log-probs.
    values = torch.where(mask, token_logprobs.float(), torch.full_like(token_logprobs, math.inf, dtype=torch.float32))
    ordered, _ = values.sort(dim=1)
    k = torch.clamp((counts.float() * k_percent / 100.0).floor().long(), min=1)
    keep = torch.arange(ordered.shape[1], device=ordered.device)[None, :] < k[:, None]
    return -(torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=1) / k)


def roc_auc(negative_scores: Sequence[float], positive_scores: Sequence[float]) -> float:
    """P(positive score > negative score) + ½·P(equal): the area under the ROC curve, by ranks
    (Mann–Whitney U), exact for ties. Positives here are the held-out items."""
    neg = np.asarray(negative_scores, dtype=np.float64)
    pos = np.asarray(positive_scores, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("AUC needs at least one score on each side")
    if np.isnan(neg).any() or np.isnan(pos).any():
        raise ValueError("AUC got a NaN score")
    values = np.concatenate([neg, pos])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    # Average rank (1-based) for each run of tied values.
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    rank_sum = ranks[neg.size:].sum()
    u = rank_sum - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def scores_from_token_nll(nll: torch.Tensor, mask: torch.Tensor, answers: Sequence[str],
                          min_k_percents: Sequence[int]) -> dict[str, list[float]]:
    """Each attack's score per row from per-token NLL (B, T) and the answer-token mask (B, T)."""
    counts = mask.sum(dim=1)
    if (counts == 0).any():
        raise ValueError("an item has no answer token to score (empty or truncated answer?)")
    mean_nll = ((nll * mask).sum(dim=1) / counts).tolist()
    out = {"loss": mean_nll, "zlib": [v / zlib_entropy(a) for v, a in zip(mean_nll, answers)]}
    for k in min_k_percents:
        out[f"min_k_{k}"] = min_k_score(-nll, mask, k).tolist()
    return out


@torch.no_grad()
def sample_scores(vlm: VLM, items: Sequence[Item], cfg: MIAConfig | None = None,
                  encoder: Encoder | None = None) -> dict[str, list[float]]:
    """Every attack's non-membership score for each item (in order), batched."""
    cfg = cfg or MIAConfig()
    encoder = encoder or Encoder(vlm)
    model = vlm.model
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {name: [] for name in (*ATTACKS, *(f"min_k_{k}" for k in cfg.min_k_percents))}
    try:
        for start in range(0, len(items), cfg.batch_size):
            chunk = items[start:start + cfg.batch_size]
            batch = {k: v.to(vlm.device) for k, v in encoder.batch(chunk, train=True).items()}
            nll, mask = answer_token_nll(model, batch)  # the LM head on answer positions only
            for name, values in scores_from_token_nll(nll, mask, [i.answer for i in chunk], cfg.min_k_percents).items():
                scores[name] += values
    finally:
        model.train(was_training)
    return scores


def _subsample(items: Sequence[Item], limit: int | None, seed: str) -> list[Item]:
    items = list(items)
    if limit is None or len(items) <= limit:
        return items
    import random

    return random.Random(seed).sample(items, limit)


def membership_inference(vlm: VLM, members: Sequence[Item], non_members: Sequence[Item],
                         cfg: MIAConfig | None = None, edit: Any = None, seed: int = 0) -> dict[str, Any]:
    """AUC of each attack (forget vs held-out), overall and per modality, with ``edit`` applied if given."""
    cfg = cfg or MIAConfig()
    if not members or not non_members:
        raise ValueError(f"membership inference needs member and non-member items (got {len(members)} and "
                         f"{len(non_members)})")
    members = _subsample(members, cfg.max_items, f"{seed}:members")
    non_members = _subsample(non_members, cfg.max_items, f"{seed}:non_members")
    encoder = Encoder(vlm)
    if edit is not None:
        with edit.applied(vlm):
            member_scores = sample_scores(vlm, members, cfg, encoder)
            other_scores = sample_scores(vlm, non_members, cfg, encoder)
    else:
        member_scores = sample_scores(vlm, members, cfg, encoder)
        other_scores = sample_scores(vlm, non_members, cfg, encoder)
    out: dict[str, Any] = {"auc": {}, "by_modality": {}, "mean_score": {},
                           "counts": {"members": len(members), "non_members": len(non_members)},
                           "config": asdict(cfg)}
    for attack in member_scores:
        out["auc"][attack] = roc_auc(member_scores[attack], other_scores[attack])
        out["mean_score"][attack] = {"members": float(np.mean(member_scores[attack])),
                                     "non_members": float(np.mean(other_scores[attack]))}
    for modality in ("vqa", "qa"):
        m_index = [i for i, item in enumerate(members) if item.modality == modality]
        n_index = [i for i, item in enumerate(non_members) if item.modality == modality]
        if m_index and n_index:
            out["by_modality"][modality] = {
                attack: roc_auc([member_scores[attack][i] for i in m_index], [other_scores[attack][i] for i in n_index])
                for attack in member_scores}
    return out


def mia_items(benchmark: Benchmark) -> tuple[list[Item], list[Item]]:
    """Members (the forget people's training items) and non-members (``benchmark.holdout``:
    items about people the vanilla model never saw). Empty non-members: the benchmark has none."""
    return list(benchmark.forget_train), list(benchmark.holdout)
