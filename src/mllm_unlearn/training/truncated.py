"""Forward passes that stop at one language-model layer, and frozen references cut there.

Representation losses (RMU, MIP-Editor's RMisU) read the hidden states of one LM layer ``L``;
the layers after it, the final norm's input and the full-vocabulary head contribute nothing
but memory (their activations are kept for the backward pass) and compute. Here the model's
own forward runs with its decoder-layer list temporarily cut to layers ``0..L`` (so every
family's embedding, vision and position code is used as is, and DDP/peft wrappers see a
normal forward), the head on one position only, and a hook on layer ``L`` captures its output.
The frozen reference of those losses is a copy of the embeddings, vision tower, projector
and layers ``0..L`` only: at 7B and L = 7 about a quarter of the language model instead of
a second full model.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ..models.base import ModelAdapter, module_path
from .losses import model_inputs


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DDP-style wrappers (``.module``); peft wrappers are handled by the adapter."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _replace_child(model: nn.Module, target: nn.Module, replacement: nn.Module) -> tuple[nn.Module, str]:
    path = module_path(model, target)
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, replacement)
    return parent, attribute


@contextmanager
def layers_up_to(model: nn.Module, adapter: ModelAdapter, layer: int) -> Iterator[nn.Module]:
    """Within the block, ``model``'s language model has only decoder layers ``0..layer``;
    yields layer ``layer``. The original layer list is put back on exit, errors included."""
    inner = _unwrapped(model)
    layers = adapter.lm_layers(inner)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be in [0, {len(layers) - 1}] for this model, got {layer}")
    kept = nn.ModuleList(list(layers)[: layer + 1])
    parent, attribute = _replace_child(inner, layers, kept)
    try:
        yield kept[layer]
    finally:
        setattr(parent, attribute, layers)


def hidden_at_layer(model: nn.Module, adapter: ModelAdapter, layer: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output hidden states (B, T, H) of LM decoder layer ``layer`` on ``batch``; the layers
    after it never run. Differentiable like a full forward (gradient checkpointing included)."""
    captured: dict[str, torch.Tensor] = {}

    def store(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    with layers_up_to(model, adapter, layer) as block:
        handle = block.register_forward_hook(store)
        try:
            # The head on the last position only: its output is not used.
            model(**model_inputs(batch), logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(f"hidden_at_layer: LM layer {layer} did not run in {type(model).__name__}'s forward")
    return captured["hidden"]


def truncated_reference(model: nn.Module, adapter: ModelAdapter, layer: int) -> nn.Module:
    """A frozen, eval-mode copy of ``model`` holding only what the hidden states of LM layer
    ``layer`` depend on: embeddings, vision tower, projector, decoder layers ``0..layer`` (and the
    final norm). The output head is not copied (an identity stands in for it). Use it with
    ``hidden_at_layer``; ``model`` itself is left unchanged."""
    inner = _unwrapped(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    with layers_up_to(inner, adapter, layer):
        if head is None:
            reference = copy.deepcopy(inner)
        else:
            parent, attribute = _replace_child(inner, head, nn.Identity())
            try:
                reference = copy.deepcopy(inner)
            finally:
                setattr(parent, attribute, head)
    reference.eval()
    reference.requires_grad_(False)
    return reference
