"""NeuronMask: zero or scale chosen FFN neurons (inputs of a down projection), reversibly.

Applied as forward pre-hooks on the down-projection modules, so the weights never change
and removing the hooks restores the model exactly. ``bake`` instead scales the matching
weight columns, which gives the same outputs (the down projection is linear in each input
coordinate) and lets the pruned model be saved as a normal checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .base import Edit, EditHandle, register_edit


def site_modules(model: nn.Module, paths: list[str]) -> dict[str, nn.Module]:
    modules = {}
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"neuron mask does not fit this model: module {path!r} not found") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"neuron mask: {path!r} is a {type(module).__name__}, not a Linear down projection")
        modules[path] = module
    return modules


@register_edit
class NeuronMask(Edit):
    """Per site (dotted path of a down projection): neuron indices and the factor each is scaled by.

    ``scales`` holds one factor per index (0 = pruned, the default; 0 < s < 1 = soft scaling).
    """

    kind = "neuron_mask"

    def __init__(self, indices: Mapping[str, torch.Tensor | list[int]], scales: Mapping[str, torch.Tensor] | None = None,
                 meta: dict[str, Any] | None = None):
        self.indices: dict[str, torch.Tensor] = {}
        self.scales: dict[str, torch.Tensor] = {}
        for path, idx in indices.items():
            idx = torch.as_tensor(idx, dtype=torch.long).flatten().cpu()
            if idx.numel() == 0:
                continue
            scale = torch.zeros(idx.numel()) if scales is None or path not in scales else \
                torch.as_tensor(scales[path], dtype=torch.float32).flatten().cpu()
            if scale.numel() == 1 and idx.numel() > 1:
                scale = scale.expand(idx.numel()).clone()
            if scale.shape != idx.shape:
                raise ValueError(f"neuron mask {path}: {idx.numel()} indices but {scale.numel()} scales")
            self.indices[path] = idx
            self.scales[path] = scale
        self.meta = dict(meta or {})

    @property
    def neuron_count(self) -> int:
        return sum(i.numel() for i in self.indices.values())

    def _check(self, modules: dict[str, nn.Module]) -> None:
        for path, idx in self.indices.items():
            width = modules[path].in_features
            if int(idx.max()) >= width or int(idx.min()) < 0:
                raise ValueError(f"neuron mask does not fit this model: {path} has {width} neurons, "
                                 f"the mask names neuron {int(idx.max())}")

    def _factors(self, path: str, module: nn.Linear) -> torch.Tensor:
        factors = torch.ones(module.in_features, dtype=module.weight.dtype, device=module.weight.device)
        factors[self.indices[path].to(factors.device)] = self.scales[path].to(factors)
        return factors

    def apply(self, vlm: Any) -> EditHandle:
        modules = site_modules(vlm.model, list(self.indices))
        self._check(modules)
        handles = []
        for path, module in modules.items():
            factors = self._factors(path, module)

            def scale_inputs(_module: nn.Module, args: tuple, factors: torch.Tensor = factors) -> tuple:
                return (args[0] * factors.to(args[0].dtype), *args[1:])

            handles.append(module.register_forward_pre_hook(scale_inputs))

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return EditHandle(undo)

    def bake(self, vlm: Any) -> None:
        modules = site_modules(vlm.model, list(self.indices))
        self._check(modules)
        with torch.no_grad():
            for path, module in modules.items():
                module.weight.mul_(self._factors(path, module)[None, :])

    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for k, path in enumerate(sorted(self.indices)):
            tensors[f"{k}.indices"] = self.indices[path]
            tensors[f"{k}.scales"] = self.scales[path]
        save_file(tensors, str(folder / "neurons.safetensors"), metadata={str(k): p for k, p in enumerate(sorted(self.indices))})

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "NeuronMask":
        from safetensors import safe_open

        file = folder / "neurons.safetensors"
        with safe_open(str(file), "pt") as handle:
            paths = handle.metadata() or {}
            indices = {p: handle.get_tensor(f"{k}.indices") for k, p in paths.items()}
            scales = {p: handle.get_tensor(f"{k}.scales") for k, p in paths.items()}
        return cls(indices, scales, meta)
