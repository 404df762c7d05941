"""Steering: input-aware activation steering of the language model (MLLMEraser's edit).

Per steered LM layer l a matrix W_l (hidden × hidden). After block l runs, the steering
vector s = strength · (h_last · W_l) is computed from the block's output at the last
position and added to the block's output:

- **prefill** (the forward pass that starts from an empty KV cache, or any forward without
  a cache, e.g. the likelihood MCQ scorer): s is added to *every* position of the sequence,
  as MLLMEraser's released code does, so the keys and values cached for the prompt carry the
  steering and every later decoding step attends to steered states. h_last is the last
  position, which is the last real token because batches are left-padded (``data.collate``).
- **decode steps** (``decode=True`` only): each new token's own output h_t gives s = strength ·
  (h_t · W_l), added to that token. With ``decode=False`` (default, the released code's choice)
  decode steps are untouched and the steering persists only through the cache.

Prefill vs decode is read from the KV cache, not from the sequence length (a one-token
prompt is still a prefill; a multi-token continuation is not): a forward pre-hook on the
first LM layer records how many positions the cache held before this forward
(``past_key_values.get_seq_length(0)``, the same call for LLaVA and Qwen2.5-VL in
transformers 5.x), and the steering hooks read it.

W is input-aware by construction (``methods/mllmeraser.py``): W = P·Δ with P a projector onto
the null space of retain activations, so h_last · W ≈ 0 for retained inputs. Nothing in the
model's parameters changes; removing the hooks restores the model exactly.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .base import Edit, EditHandle, register_edit


def _output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _StepState:
    """Whether the forward now running is a prefill (set by a pre-hook on the first LM layer)."""

    def __init__(self) -> None:
        self.prefill = True

    def record(self, _module: nn.Module, _args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        self.prefill = cache is None or int(cache.get_seq_length(0)) == 0


@register_edit
class Steering(Edit):
    """Steering matrices per LM layer index, a strength (optionally one per evaluation task), and
    whether decode steps are steered too."""

    kind = "steering"

    def __init__(self, matrices: Mapping[int, torch.Tensor], strength: float = 1.0, decode: bool = False,
                 meta: dict[str, Any] | None = None, task_strengths: Mapping[str, float] | None = None):
        if not matrices:
            raise ValueError("a steering edit needs at least one layer's matrix")
        self.matrices: dict[int, torch.Tensor] = {}
        for layer, matrix in sorted(matrices.items()):
            matrix = torch.as_tensor(matrix).detach().to("cpu", copy=True).contiguous()
            if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"steering matrix of layer {layer} must be square (hidden × hidden), "
                                 f"got shape {tuple(matrix.shape)}")
            self.matrices[int(layer)] = matrix
        widths = {m.shape[0] for m in self.matrices.values()}
        if len(widths) != 1:
            raise ValueError(f"steering matrices have different widths {sorted(widths)}")
        self.strength = float(strength)
        # Per evaluation task ("mcq", "cloze", "generation"): MLLMEraser's released evaluation
        # steers cloze harder (0.3) than classification and generation (0.2). Others use ``strength``.
        self.task_strengths = {str(task): float(value) for task, value in (task_strengths or {}).items()}
        self.active_strength = self.strength  # what the hooks use now (see ``for_task``)
        self.decode = bool(decode)
        self.meta = dict(meta or {})

    @contextmanager
    def for_task(self, task: str) -> Iterator[None]:
        previous = self.active_strength
        self.active_strength = self.task_strengths.get(task, self.strength)
        try:
            yield
        finally:
            self.active_strength = previous

    @property
    def layers(self) -> list[int]:
        return list(self.matrices)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.matrices.values())).shape[0]

    @property
    def extra_bytes(self) -> int:
        """Memory the steering matrices add to the model (as stored)."""
        return sum(m.numel() * m.element_size() for m in self.matrices.values())

    def steering_vectors(self, layer: int, hidden_last: torch.Tensor) -> torch.Tensor:
        """strength · (h · W_layer) for rows h of ``hidden_last`` (…, hidden), in fp32 (the active task's strength)."""
        return self.active_strength * (hidden_last.float() @ self.matrices[layer].float().to(hidden_last.device))

    def apply(self, vlm: Any, record: dict[tuple[str, int], list[torch.Tensor]] | None = None) -> EditHandle:
        """Register the hooks. ``record``, if given, receives the norms of the steering vectors added,
        under ("prefill" | "decode", layer): one row per input (a diagnostic of the gate)."""
        layers = vlm.adapter.lm_layers(vlm.model)
        for layer in self.matrices:
            if not 0 <= layer < len(layers):
                raise ValueError(f"steering edit does not fit this model: it steers LM layer {layer}, "
                                 f"the model has {len(layers)} layers")
        width = getattr(layers[0], "hidden_size", None) or _hidden_width(layers[0])
        if width is not None and width != self.hidden_size:
            raise ValueError(f"steering edit does not fit this model: matrices are {self.hidden_size} wide, "
                             f"the LM hidden size is {width}")
        state = _StepState()
        handles = [layers[0].register_forward_pre_hook(state.record, with_kwargs=True)]
        for layer, matrix in self.matrices.items():
            param = next(layers[layer].parameters())
            weights = matrix.to(param.device, param.dtype)  # converted once per apply, not per forward

            def steer(_module: nn.Module, _args: tuple, output: Any, weights: torch.Tensor = weights,
                      layer: int = layer) -> Any:
                hidden = _output_hidden(output)
                if state.prefill:
                    vector = (hidden[:, -1, :] @ weights.to(hidden.dtype)) * self.active_strength
                    if record is not None:
                        record.setdefault(("prefill", layer), []).append(vector.detach().float().norm(dim=-1).cpu())
                    return _with_hidden(output, hidden + vector[:, None, :])
                if self.decode:
                    vectors = (hidden @ weights.to(hidden.dtype)) * self.active_strength
                    if record is not None:
                        record.setdefault(("decode", layer), []).append(vectors[:, -1].detach().float().norm(dim=-1).cpu())
                    return _with_hidden(output, hidden + vectors)
                return output

            handles.append(layers[layer].register_forward_hook(steer))

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return EditHandle(undo)

    @torch.no_grad()
    def steering_norms(self, vlm: Any, batches: Any) -> torch.Tensor:
        """Per input, the norm of all its steering vectors together (√Σ_l ‖s_l‖²), with the edit applied."""
        record: dict[tuple[str, int], list[torch.Tensor]] = {}
        handle = self.apply(vlm, record)
        try:
            for batch in batches:
                vlm.model(**batch, logits_to_keep=1)
        finally:
            handle.remove()
        if not record:
            return torch.zeros(0)
        per_layer = [torch.cat(record[("prefill", layer)]) for layer in self.layers]
        return torch.stack(per_layer).pow(2).sum(0).sqrt()

    bakeable = False

    def bake(self, vlm: Any) -> None:
        raise ValueError("a steering edit depends on each input's activations and cannot be baked into the weights; "
                         "apply it (Edit.apply) at inference instead")

    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({f"layer.{layer}": matrix for layer, matrix in self.matrices.items()},
                  str(folder / "steering.safetensors"),
                  metadata={"strength": repr(self.strength), "decode": str(self.decode),
                            "task_strengths": json.dumps(self.task_strengths, sort_keys=True)})

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "Steering":
        from safetensors import safe_open

        file = folder / "steering.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{folder} is not a saved steering edit: {file} is missing")
        with safe_open(str(file), "pt") as handle:
            info = handle.metadata() or {}
            if "strength" not in info or "decode" not in info:
                raise ValueError(f"{file}: metadata must hold 'strength' and 'decode', has {sorted(info)}")
            matrices = {int(key.split(".", 1)[1]): handle.get_tensor(key) for key in handle.keys()}
        try:
            task_strengths = json.loads(info.get("task_strengths", "{}"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: metadata 'task_strengths' is not JSON ({error})") from None
        return cls(matrices, float(info["strength"]), info["decode"] == "True", meta, task_strengths)


def _hidden_width(layer: nn.Module) -> int | None:
    norm = getattr(layer, "input_layernorm", None)
    weight = getattr(norm, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
