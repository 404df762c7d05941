"""WeightDelta: the changed tensors of a gradient-based edit (GA, GradDiff, NPO, ...)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import Edit, EditHandle, register_edit


@register_edit
class WeightDelta(Edit):
    """New values of the parameters a method changed. Applying swaps them in; removing swaps
    the originals back bit for bit (storing values, not differences, keeps it exact)."""

    kind = "weight_delta"

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None):
        # Own copies: a view of a live parameter would change when the model is restored.
        self.tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
        self.meta = dict(meta or {})

    @classmethod
    def from_models(cls, before: dict[str, torch.Tensor], model: torch.nn.Module, meta: dict[str, Any] | None = None,
                    ) -> "WeightDelta":
        """The parameters of ``model`` that differ from the ``before`` snapshot."""
        changed = {}
        for name, param in model.named_parameters():
            if name in before and not torch.equal(before[name], param.detach().cpu()):
                changed[name] = param.detach()
        return cls(changed, meta)

    @classmethod
    def between(cls, vlm: Any, checkpoint: str | Path, meta: dict[str, Any] | None = None) -> "WeightDelta":
        """The parameters in which the checkpoint at ``checkpoint`` (an unlearned model, made by
        this tool or another) differs from ``vlm`` (the model it was unlearned from). Applying the
        result to ``vlm`` gives the checkpoint's weights, so the checkpoint can be evaluated,
        attacked and compared like any edit. Holds both models in memory while comparing."""
        from ..models import load_vlm
        from ..models.base import adapter_for_checkpoint
        from ..utils import DTYPES

        family = adapter_for_checkpoint(checkpoint).family
        if family != vlm.adapter.family:
            raise ValueError(f"{checkpoint} is a {family} checkpoint; the model it is compared with is {vlm.adapter.family}")
        dtype_name = {v: k for k, v in DTYPES.items()}[vlm.dtype]
        other = dict(load_vlm(checkpoint, device="cpu", dtype=dtype_name).model.named_parameters())
        ours = dict(vlm.model.named_parameters())
        if set(other) != set(ours):
            differ = sorted(set(other) ^ set(ours))
            raise ValueError(f"{checkpoint} does not have this model's parameters (e.g. {differ[:3]})")
        changed = {}
        for name, param in ours.items():
            if other[name].shape != param.shape:
                raise ValueError(f"{checkpoint}: {name} has shape {tuple(other[name].shape)}, "
                                 f"the model {tuple(param.shape)}")
            if not torch.equal(other[name], param.detach().cpu()):
                changed[name] = other[name]
        return cls(changed, {"method": "checkpoint", "checkpoint": str(checkpoint), **(meta or {})})

    def apply(self, vlm: Any) -> EditHandle:
        params = dict(vlm.model.named_parameters())
        missing = [n for n in self.tensors if n not in params]
        if missing:
            raise ValueError(f"weight edit does not fit this model: parameters {missing[:3]} not found")
        originals = {}
        with torch.no_grad():
            for name, value in self.tensors.items():
                if params[name].shape != value.shape:
                    raise ValueError(f"weight edit does not fit this model: {name} has shape "
                                     f"{tuple(params[name].shape)}, the edit {tuple(value.shape)}")
                originals[name] = params[name].detach().clone()
                params[name].copy_(value)

        def undo() -> None:
            with torch.no_grad():
                for name, value in originals.items():
                    params[name].copy_(value)

        return EditHandle(undo)

    @property
    def changed_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(self.tensors, str(folder / "weights.safetensors"))

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "WeightDelta":
        from safetensors.torch import load_file

        return cls(load_file(str(folder / "weights.safetensors")), meta)
