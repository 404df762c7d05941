"""Streaming per-neuron activation statistics of FFN neurons (inputs of the down projections).

One forward pass per batch stream, forward pre-hooks on the down-projection modules, and only
running sums kept (fp64), so memory does not grow with the number of samples: this replaces the
"store every activation, then reduce" of MANU's released code. Statistics are kept per site
(one layer's down projection), never pooled across layers.

Which positions count:

- vision sites (``vision_sites``): every position the vision tower sees (patches, class token);
  a batch without images never reaches them, so text-only items contribute nothing there.
- language sites (``lm_sites``): non-padding tokens, narrowed by ``positions``:
  ``"all"`` every non-padding token (prompt, image tokens and answer; what MANU's paper and
  code use), ``"answer"`` the positions that predict an answer token (the last prompt token
  through the second-to-last answer token; needs ``labels``), ``"last"`` the last prompt token
  only (the one that predicts the answer's first token; MIP-Editor's MANU keeps the last token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..models.base import NeuronSite
from ..utils import process_rank_and_count

POSITIONS = ("all", "answer", "last")
IGNORE = -100


@dataclass
class SiteStatistics:
    """Statistics of one site's neurons over every counted position (fp32 vectors of the site's width)."""

    count: int  # positions counted
    abs_mean: torch.Tensor  # mean |a|
    frequency: torch.Tensor  # fraction of positions with |a| > threshold
    mean: torch.Tensor  # mean a
    variance: torch.Tensor  # population variance of a
    rms: torch.Tensor  # sqrt(mean a²)

    STATISTICS = ("abs_mean", "frequency", "variance", "rms")

    @classmethod
    def from_activations(cls, activations: torch.Tensor, threshold: float) -> "SiteStatistics":
        """The same statistics from stored activations (rows = positions): the brute-force reference."""
        a = activations.reshape(-1, activations.shape[-1]).double()
        if a.shape[0] == 0:
            return cls.empty(activations.shape[-1])
        return cls(a.shape[0], a.abs().mean(0).float(), (a.abs() > threshold).double().mean(0).float(),
                   a.mean(0).float(), a.var(0, unbiased=False).float(), a.pow(2).mean(0).sqrt().float())

    @classmethod
    def empty(cls, width: int) -> "SiteStatistics":
        zeros = torch.zeros(width)
        return cls(0, zeros, zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone())


class _RunningSite:
    """Running sums for one site (fp64); mean/variance merged batch by batch (Chan et al.)."""

    def __init__(self, width: int, threshold: float):
        self.threshold = threshold
        self.count = 0
        self.abs_sum = torch.zeros(width, dtype=torch.float64)
        self.above = torch.zeros(width, dtype=torch.float64)
        self.square_sum = torch.zeros(width, dtype=torch.float64)
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.m2 = torch.zeros(width, dtype=torch.float64)  # sum of squared deviations from the mean

    def add(self, rows: torch.Tensor) -> None:
        n = rows.shape[0]
        if n == 0:
            return
        a = rows.detach().double()
        batch_mean = a.mean(0)
        batch_m2 = (a - batch_mean).pow(2).sum(0)
        total = self.count + n
        delta = (batch_mean - self.mean.to(a.device)).cpu()
        self.mean += delta * (n / total)
        self.m2 += batch_m2.cpu() + delta.pow(2) * (self.count * n / total)
        self.abs_sum += a.abs().sum(0).cpu()
        self.above += (a.abs() > self.threshold).sum(0).cpu().double()
        self.square_sum += a.pow(2).sum(0).cpu()
        self.count = total

    def merge(self, other: "_RunningSite") -> None:
        """Fold in another process's sums (Chan et al.'s pairwise update of mean and M2)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * (other.count / total)
        self.m2 += other.m2 + delta.pow(2) * (self.count * other.count / total)
        self.abs_sum += other.abs_sum
        self.above += other.above
        self.square_sum += other.square_sum
        self.count = total

    def result(self) -> SiteStatistics:
        if self.count == 0:
            return SiteStatistics.empty(self.mean.numel())
        n = self.count
        return SiteStatistics(n, (self.abs_sum / n).float(), (self.above / n).float(), self.mean.float(),
                              (self.m2 / n).clamp_min(0).float(), (self.square_sum / n).sqrt().float())


def position_mask(batch: Mapping[str, torch.Tensor], positions: str) -> torch.Tensor:
    """(batch, tokens) bool mask of the language-model positions to count (padding never counts)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    attention = batch["attention_mask"].bool()
    if positions == "all":
        return attention
    labels = batch.get("labels")
    if labels is None:
        if positions == "answer":
            raise ValueError("positions='answer' needs batches with labels (answer tokens marked)")
        # No answers: the last non-padding token is the one that predicts the answer.
        mask = torch.zeros_like(attention)
        last = attention.shape[1] - 1 - attention.flip(1).long().argmax(1)
        mask[torch.arange(mask.shape[0]), last] = attention.any(1)
        return mask
    predicts_answer = torch.zeros_like(attention)
    predicts_answer[:, :-1] = labels[:, 1:] != IGNORE
    predicts_answer &= attention
    if positions == "answer":
        return predicts_answer
    first = predicts_answer.long().argmax(1)  # first position predicting an answer token
    mask = torch.zeros_like(attention)
    mask[torch.arange(mask.shape[0]), first] = predicts_answer.any(1)
    return mask


def _model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}  # no loss needed


@torch.no_grad()
def collect_neuron_statistics(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                              lm_sites: Sequence[NeuronSite] = (), vision_sites: Sequence[NeuronSite] = (),
                              positions: str = "all", threshold: float = 0.1) -> dict[str, SiteStatistics]:
    """Per-site neuron statistics over ``batches`` (one forward each), keyed by site name.

    Hooks are forward pre-hooks on each site's down projection and are always removed. Nothing
    but running sums is stored. Batches are model inputs (``attention_mask`` required; ``labels``
    for ``positions='answer'``), already on the model's device.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    names = [s.name for s in [*lm_sites, *vision_sites]]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    running = {s.name: _RunningSite(s.width, threshold) for s in [*lm_sites, *vision_sites]}
    current: dict[str, torch.Tensor] = {}  # the position mask of the batch being run

    def lm_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            activation = args[0]
            mask = current["mask"]
            if activation.shape[:2] != mask.shape:
                raise RuntimeError(f"neuron statistics: site {name} saw activations of shape {tuple(activation.shape)}, "
                                   f"which do not line up with the tokens {tuple(mask.shape)}")
            running[name].add(activation[mask.to(activation.device)])
        return hook

    def vision_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            activation = args[0]
            running[name].add(activation.reshape(-1, activation.shape[-1]))
        return hook

    hooks = [(s, lm_hook(s.name)) for s in lm_sites] + [(s, vision_hook(s.name)) for s in vision_sites]
    # Under ``accelerate launch`` the batches are shared out (batch k to process k mod N) and the
    # running sums merged in process order: every process gets the statistics of all batches.
    rank, processes = process_rank_and_count()
    mine = (batch for index, batch in enumerate(batches) if index % processes == rank)
    _forward_with_site_hooks(model, mine, hooks, positions, current)
    if processes > 1:  # collective: every process calls this with the same batches
        gathered: list[Any] = [None] * processes
        torch.distributed.all_gather_object(gathered, running)
        running = gathered[0]
        for other in gathered[1:]:
            for name, site in running.items():
                site.merge(other[name])
    return {name: site.result() for name, site in running.items()}


def _forward_with_site_hooks(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                             hooks: Sequence[tuple[NeuronSite, Any]], positions: str,
                             current: dict[str, torch.Tensor]) -> None:
    """One eval-mode forward per batch with each site's pre-hook registered (always removed);
    ``current["mask"]`` holds the batch's position mask while it runs."""
    was_training = model.training
    model.eval()
    handles = []
    try:
        for site, hook in hooks:
            handles.append(model.get_submodule(site.module_path).register_forward_pre_hook(hook))
        for batch in batches:
            current["mask"] = position_mask(batch, positions)
            model(**_model_inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


@torch.no_grad()
def stored_activations(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                       lm_sites: Sequence[NeuronSite] = (), vision_sites: Sequence[NeuronSite] = (),
                       positions: str = "all") -> dict[str, torch.Tensor]:
    """Every counted activation, stored (rows = positions): the memory-hungry reference that
    ``collect_neuron_statistics`` replaces; kept for tests and the memory benchmark."""
    stored: dict[str, list[torch.Tensor]] = {s.name: [] for s in [*lm_sites, *vision_sites]}
    current: dict[str, torch.Tensor] = {}

    def hook(name: str, token_aligned: bool):
        def store(_module: nn.Module, args: tuple) -> None:
            activation = args[0]
            rows = activation[current["mask"]] if token_aligned else activation.reshape(-1, activation.shape[-1])
            stored[name].append(rows.detach().float().cpu())
        return store

    hooks = [(s, hook(s.name, True)) for s in lm_sites] + [(s, hook(s.name, False)) for s in vision_sites]
    _forward_with_site_hooks(model, batches, hooks, positions, current)
    widths = {s.name: s.width for s in [*lm_sites, *vision_sites]}
    return {name: torch.cat(rows) if rows else torch.zeros(0, widths[name]) for name, rows in stored.items()}
