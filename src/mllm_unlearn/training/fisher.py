"""Diagonal empirical Fisher information, accumulated as a stream over mini-batches."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def diagonal_fisher(model: torch.nn.Module, batches: Iterable[Any], loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                    parameters: dict[str, torch.nn.Parameter], out_device: torch.device | str | None = None,
                    ) -> dict[str, torch.Tensor]:
    """Mean over mini-batches of the squared mini-batch gradient of each parameter, in fp32.

    An element of ``batches`` may be a list of parts of one mini-batch (``training.batching``,
    token-bounded): their gradients are accumulated, each part's loss weighted by its share of
    the rows (``loss_fn`` is a mean over rows), so the squared gradient is the whole batch's.
    Only ``parameters`` accumulate (others get no gradient buffer); nothing but the running
    sums is kept, so memory is one fp32 copy of the selected parameters. ``out_device`` (e.g.
    "cpu"): each finished mean is moved there tensor by tensor, freeing the device's copy, so a
    second Fisher can be computed on the device without two fp32 copies of a tower there.

    Under ``accelerate launch`` (several processes) the mini-batches are shared out (batch k to
    process k mod N) and the sums and counts all-reduced: every process gets the one-process
    result (same mini-batches, so the same Fisher up to summation order).
    """
    from ..utils import process_rank_and_count

    rank, processes = process_rank_and_count()
    if not parameters:
        raise ValueError("diagonal_fisher: no parameters selected")
    was_training = model.training
    model.eval()
    wanted = {id(p) for p in parameters.values()}
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()}
    count = 0
    try:
        for index, batch in enumerate(batches):
            if index % processes != rank:
                continue
            model.zero_grad(set_to_none=True)
            parts = batch if isinstance(batch, list) else [batch]
            rows = [_rows(part) for part in parts]
            for part, share in zip(parts, rows):
                loss = loss_fn(model, part)
                (loss if len(parts) == 1 else loss * (share / sum(rows))).backward()
            for name, p in parameters.items():
                if p.grad is not None:
                    sums[name] += p.grad.detach().float() ** 2
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
        model.train(was_training)
    if processes > 1:  # collective: every process calls this with the same batches
        counted = torch.tensor([float(count)], device=next(iter(sums.values())).device)
        torch.distributed.all_reduce(counted)
        count = int(counted.item())
        for value in sums.values():
            torch.distributed.all_reduce(value)
    if count == 0:
        raise ValueError("diagonal_fisher: no batches")
    means = {}
    for name in list(sums):  # one tensor at a time: the device never holds the sums and their copies
        total = sums.pop(name)
        means[name] = (total.div_(count) if out_device is None else total.to(out_device).div_(count))
        del total
    return means


def _rows(batch: Any) -> int:
    return int(batch["input_ids"].shape[0]) if isinstance(batch, dict) and "input_ids" in batch else 1
