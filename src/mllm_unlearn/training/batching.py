"""Batches bounded by tokens, for the passes whose memory grows with the batch's token count
(localisation statistics, Fisher, path search, PGD).

A batch of ``batch_size`` items is split, in order, into consecutive parts whose padded size
(items × longest item, image tokens included) stays within ``max_batch_tokens``; an item longer
than the budget is a part of its own. Without a budget, or where the whole batch fits, a batch
is one part: exactly today's batches. The callers combine parts so that results do not depend on
the split (sums and running statistics add up; the Fisher accumulates a batch's gradient over
its parts before squaring it).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item


def check_max_batch_tokens(value: int | None) -> int | None:
    if value is not None and int(value) < 1:
        raise ValueError(f"max_batch_tokens must be >= 1 or unset, got {value}")
    return None if value is None else int(value)


def token_lengths(items: Sequence[Item], encoder: Encoder, train: bool = True) -> list[int]:
    """Tokens of each item's encoded sequence (prompt with its image tokens, plus the answer when ``train``)."""
    lengths = []
    for item in items:
        length = int(encoder.prompt(item)["input_ids"].shape[-1])
        lengths.append(length + len(encoder.answer_ids(item.answer)) if train else length)
    return lengths


def split_by_tokens(lengths: Sequence[int], max_tokens: int | None) -> list[list[int]]:
    """Consecutive index groups of ``lengths`` whose padded size (count × longest) is at most
    ``max_tokens``; ``None``: one group."""
    if max_tokens is None:
        return [list(range(len(lengths)))] if lengths else []
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        groups.append(current)
    return groups


def batch_parts(items: Sequence[Any], batch_size: int, max_batch_tokens: int | None = None,
                lengths: Sequence[int] | None = None) -> list[list[list[Any]]]:
    """``items`` in batches of ``batch_size`` (in order), each split into token-bounded parts.
    ``lengths`` (one per item) is needed when ``max_batch_tokens`` is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_batch_tokens = check_max_batch_tokens(max_batch_tokens)
    if max_batch_tokens is not None and (lengths is None or len(lengths) != len(items)):
        raise ValueError("batch_parts: max_batch_tokens needs one token length per item")
    out = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        if max_batch_tokens is None:
            out.append([chunk])
            continue
        groups = split_by_tokens(list(lengths[start:start + batch_size]), max_batch_tokens)
        out.append([[chunk[i] for i in group] for group in groups])
    return out


def item_batch_parts(items: Sequence[Item], encoder: Encoder, batch_size: int, device: torch.device,
                     max_batch_tokens: int | None = None) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Training-form batches of ``items`` (answer labels), each as its list of token-bounded parts, on ``device``."""
    lengths = token_lengths(items, encoder, train=True) if max_batch_tokens is not None else None
    for parts in batch_parts(items, batch_size, max_batch_tokens, lengths):
        yield [{k: v.to(device) for k, v in encoder.batch(part, train=True).items()} for part in parts]
