"""Influential neuron paths (MIP-Editor): IGI for text paths, IFI for visual paths.

A path is chosen greedily, layer by layer, per forget sample. Every FFN neuron j of the
current layer l gets a gate s_j on its activation (the input of the down projection) at the
attributed positions; the path neurons already chosen in earlier layers get gates too. All
these gates move together along s = α·1, α from 0 (zero baseline) to 1 (the sample), in m
right-Riemann steps α_k = k/m. With ∂L/∂s_j = Σ_p a_pj ∂L/∂(s_j a_pj) (a the live activation):

- IGI (integrated gradients):  score_j = (1/m) Σ_k ∂L/∂s_j(α_k)     (≈ ∫_0^1 ∂L/∂s_j dα)
- IFI (integrated Fisher):     score_j = (1/m) Σ_k (∂L/∂s_j(α_k))²  (squared gradients accumulated)

L is the sample's mean answer log-probability, so a positive IGI score means the neuron
carries the answer. The path at layer l is the top-k neurons of strictly positive score
(a neuron that does not help has nothing to forget); the union over samples is pruned.

Fixed relative to the released code: attribution covers the positions that predict the answer
(option: all positions; vision: every image token), not only sequence position 0 (the BOS
token, whose activations do not depend on the input); IFI accumulates squared gradients (the
released z-score over the m steps sums to m−1 for every neuron, which made IFI rank by activation
alone); every earlier-layer path neuron takes part (the released loop kept only the last one of
each layer); modules come from the model adapters.

Speed: the m steps of a sample run as one batched forward/backward (steps in the batch
dimension), and ``batch_size`` samples share that pass, so a layer costs one pass per batch of
samples instead of m per sample. ``step_by_step=True`` runs the same maths one sample and one
step at a time (the reference for tests and the speed benchmark).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..data.collate import IGNORE, Encoder
from ..data.items import Item
from ..training.batching import batch_parts, check_max_batch_tokens, token_lengths
from ..training.losses import answer_token_nll
from ..utils import shard_and_gather

SCORES = ("ig", "fisher")
POSITIONS = ("answer", "all")


@dataclass
class Layout:
    """Where the attributed activations are in a site's input, for a batch of N examples.

    Inputs shaped (N, T, width): ``mask`` (N, T) marks the attributed positions (None: all).
    Inputs shaped (rows, width), e.g. Qwen's flattened vision tokens: ``rows_per_example`` (N,)
    gives each example's consecutive rows, all attributed.
    """

    mask: torch.Tensor | None = None
    rows_per_example: torch.Tensor | None = None


@dataclass
class PathTask:
    """What a path search needs to know about its samples and model."""

    encode: Callable[[Sequence[Any]], dict[str, torch.Tensor]]  # samples -> batch (on the model's device)
    repeat: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]]  # each example `times` times in a row
    objective: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]  # per-example value to attribute, (N,)
    layout: Callable[[dict[str, torch.Tensor]], Layout]
    # samples -> each one's token count (for ``PathSearchConfig.max_batch_tokens``)
    lengths: Callable[[Sequence[Any]], list[int]] | None = None


@dataclass
class PathSearchConfig:
    steps: int = 4  # m, Riemann steps (the paper's code: 4)
    top_k: int = 5  # path neurons per layer and sample (the paper's code: 5)
    score: str = "ig"  # "ig" (IGI) or "fisher" (IFI)
    batch_size: int = 8  # samples per batched pass (each pass holds batch_size × steps examples)
    # Also at most this many tokens per pass (samples × steps × longest sample); None: no bound.
    max_batch_tokens: int | None = None

    def check(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"path search: score must be one of {SCORES}, got {self.score!r}")
        if self.steps < 1 or self.top_k < 1 or self.batch_size < 1:
            raise ValueError("path search: steps, top_k and batch_size must be >= 1 "
                             f"(got {self.steps}, {self.top_k}, {self.batch_size})")
        check_max_batch_tokens(self.max_batch_tokens)


@dataclass
class PathSearchResult:
    """Per sample and site (in ``sites`` order): chosen neuron indices and their scores."""

    sites: list[str]
    neurons: list[list[torch.Tensor]] = field(default_factory=list)  # [sample][site] -> indices (≤ top_k)
    scores: list[list[torch.Tensor]] = field(default_factory=list)  # [sample][site] -> their scores

    def union(self, max_per_site: int | None = None) -> dict[str, torch.Tensor]:
        """Union over samples per site (scores of a neuron chosen by several samples add up);
        ``max_per_site`` keeps only the highest-scoring neurons of each union."""
        out = {}
        for s, site in enumerate(self.sites):
            total: dict[int, float] = {}
            for neurons, scores in zip(self.neurons, self.scores):
                for j, v in zip(neurons[s].tolist(), scores[s].tolist()):
                    total[j] = total.get(j, 0.0) + v
            ranked = sorted(total, key=lambda j: (-total[j], j))[:max_per_site]
            if ranked:
                out[site] = torch.tensor(sorted(ranked), dtype=torch.long)
        return out


def _rows(x: torch.Tensor, per_example: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Factors shaped like ``x`` from per-example factors (N, width); 1 where not attributed."""
    if x.dim() == 3:
        factors = per_example[:, None, :].to(x.dtype)
        if layout.mask is None:
            return factors.expand_as(x)
        return torch.where(layout.mask[:, :, None], factors, torch.ones((), dtype=x.dtype, device=x.device))
    if x.dim() == 2 and layout.rows_per_example is not None:
        owner = torch.repeat_interleave(torch.arange(per_example.shape[0], device=x.device),
                                        layout.rows_per_example.to(x.device))
        if owner.numel() != x.shape[0]:
            raise ValueError(f"path search: the site input has {x.shape[0]} rows, the layout names {owner.numel()}")
        return per_example[owner].to(x.dtype)
    raise ValueError(f"path search: cannot place examples in a site input of shape {tuple(x.shape)}")


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (only the gates'), eval mode; restored afterwards."""
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(saved[name])
        model.train(was_training)


def gate_gradients(model: nn.Module, modules: Sequence[nn.Module], layer: int, batch: dict[str, torch.Tensor],
                   task: PathTask, alphas: torch.Tensor, earlier: Sequence[torch.Tensor]) -> torch.Tensor:
    """∂objective/∂s of the gates of ``modules[layer]`` for each example, shape (N, width).

    Example n has every neuron of ``modules[layer]`` scaled by alphas[n] and, for each earlier
    site i, the neurons where earlier[i][n] is True scaled by alphas[n] as well.
    """
    layout = task.layout(batch)
    width = modules[layer].in_features
    gate = alphas[:, None].to(torch.float32).expand(alphas.shape[0], width).clone().requires_grad_(True)
    handles = []

    def hook_for(index: int) -> Callable:
        def scale(_module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            if index == layer:
                per_example = gate
            else:
                path = earlier[index].to(x.device)
                per_example = torch.where(path, alphas[:, None].to(torch.float32), torch.ones((), device=x.device))
            return (x * _rows(x, per_example, layout), *args[1:])

        return scale

    try:
        for index in range(layer + 1):
            handles.append(modules[index].register_forward_pre_hook(hook_for(index)))
        value = task.objective(model, batch)
        if not value.requires_grad:  # the site does not reach the output (e.g. LLaVA's unused last vision layer)
            return torch.zeros_like(gate)
        (grad,) = torch.autograd.grad(value.sum(), gate)
    finally:
        for handle in handles:
            handle.remove()
    return grad


def _choose(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k indices among strictly positive scores (ties: lower index first), sorted by index."""
    k = min(top_k, int((scores > 0).sum()))
    order = torch.sort(-scores, stable=True).indices[:k]  # stable: equal scores keep index order
    chosen = order.sort().values
    return chosen, scores[chosen].detach().cpu()


def _reduce(grads: torch.Tensor, score: str) -> torch.Tensor:
    """(steps, width) gate gradients of one sample -> its scores (width,)."""
    return grads.mean(dim=0) if score == "ig" else grads.pow(2).mean(dim=0)


def search_paths(model: nn.Module, sites: Sequence[str], samples: Sequence[Any], task: PathTask,
                 cfg: PathSearchConfig, step_by_step: bool = False) -> PathSearchResult:
    """Greedy layer-by-layer paths through ``sites`` (down-projection module paths, in forward
    order) for every sample; see the module docstring for the scores."""
    cfg.check()
    if not samples:
        raise ValueError("path search: no samples")
    modules = [model.get_submodule(path) for path in sites]
    for path, module in zip(sites, modules):
        if not isinstance(module, nn.Linear):
            raise ValueError(f"path search: {path!r} is a {type(module).__name__}, not a Linear down projection")
    m = cfg.steps
    alphas = torch.arange(1, m + 1, dtype=torch.float32) / m  # right Riemann sum: ends at the sample itself
    result = PathSearchResult(list(sites))
    with _frozen(model):
        device = next(model.parameters()).device
        alphas = alphas.to(device)
        if step_by_step:
            groups = [[s] for s in samples]
        else:  # a sample's results do not depend on which others share its pass
            lengths = None
            if cfg.max_batch_tokens is not None:
                if task.lengths is None:
                    raise ValueError("path search: max_batch_tokens needs a task that measures its samples' tokens")
                lengths = [length * m for length in task.lengths(samples)]  # each sample runs m times per pass
            groups = [part for parts in batch_parts(samples, cfg.batch_size, cfg.max_batch_tokens, lengths)
                      for part in parts]
        def run_group(group: list[Any]) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
            batch = task.encode(group)
            count = len(group)
            chosen: list[list[torch.Tensor]] = [[] for _ in group]
            values: list[list[torch.Tensor]] = [[] for _ in group]
            masks: list[torch.Tensor] = []  # per earlier site: (count, width) path neurons
            for layer, module in enumerate(modules):
                if step_by_step:
                    grads = torch.stack([
                        gate_gradients(model, modules, layer, task.repeat(batch, 1), task, alphas[k:k + 1],
                                       [mask for mask in masks])[0]
                        for k in range(m)])[None]  # (1, m, width)
                else:
                    repeated = task.repeat(batch, m)
                    grads = gate_gradients(model, modules, layer, repeated, task, alphas.repeat(count),
                                           [mask.repeat_interleave(m, dim=0) for mask in masks])
                    grads = grads.reshape(count, m, -1)
                mask = torch.zeros(count, module.in_features, dtype=torch.bool, device=device)
                for n in range(count):
                    indices, scores = _choose(_reduce(grads[n].detach().float(), cfg.score).cpu(), cfg.top_k)
                    chosen[n].append(indices)
                    values[n].append(scores)
                    mask[n, indices.to(device)] = True
                masks.append(mask)
            return chosen, values

        # Under ``accelerate launch`` the groups are shared out over the processes (each sample's
        # path depends on that sample only) and gathered back in order: every process gets all.
        for chosen, values in shard_and_gather(groups, lambda mine: [run_group(g) for g in mine]):
            result.neurons.extend(chosen)
            result.scores.extend(values)
    return result


# --- the two searches on a VLM ----------------------------------------------------------------

def answer_logprob(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean log-probability of each example's answer tokens, shape (N,)."""
    nll, mask = answer_token_nll(model, batch)  # the LM head on answer positions only
    return -nll.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def predicting_positions(batch: dict[str, torch.Tensor], positions: str) -> torch.Tensor:
    """(N, T) positions to attribute in the language model: ``answer`` = the positions whose next
    token is an answer token (their activations produce the answer); ``all`` = every non-padding token."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if positions == "all":
        return batch["attention_mask"].bool()
    labels = batch["labels"]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def _vlm_task(vlm: Any, encoder: Encoder, layout: Callable[[dict[str, torch.Tensor]], Layout]) -> PathTask:
    def encode(items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return {k: v.to(vlm.device) for k, v in encoder.batch(list(items), train=True).items()}

    return PathTask(encode=encode, repeat=vlm.adapter.repeat_examples, objective=answer_logprob, layout=layout,
                    lengths=lambda items: token_lengths(items, encoder, train=True))


def text_path_task(vlm: Any, encoder: Encoder, positions: str = "answer") -> PathTask:
    """IGI's task: language-model FFN sites, text-only samples, attributed at ``positions``."""
    predicting_positions({"attention_mask": torch.ones(1, 1), "labels": torch.zeros(1, 1)}, positions)  # check early
    return _vlm_task(vlm, encoder, lambda batch: Layout(mask=predicting_positions(batch, positions)))


def visual_path_task(vlm: Any, encoder: Encoder) -> PathTask:
    """IFI's task: vision-tower FFN sites, image + question samples, every image token attributed."""
    def layout(batch: dict[str, torch.Tensor]) -> Layout:
        rows = vlm.adapter.vision_rows_per_image(batch)
        images = batch["pixel_values"].shape[0] if rows is None else rows.numel()
        if images != batch["input_ids"].shape[0]:
            raise ValueError(f"visual path search needs one image per sample; got {images} images "
                             f"for {batch['input_ids'].shape[0]} samples")
        return Layout(rows_per_example=rows)

    return _vlm_task(vlm, encoder, layout)
