"""LowRankDelta: a LoRA edit kept as its factors (W + scale * B @ A per linear layer).

A 7B model's merged LoRA run changes ~6.5 B weights (~13 GB as whole tensors); its factors at
rank 16 hold ~40 M numbers. Applying adds each adapter's output to its layer's output through a
forward hook, as peft does for an unmerged adapter, so removing is exact and costs no copy of
the weights; ``bake`` merges the factors into the weights (for export as a checkpoint).
``export_peft_adapter`` writes a standard peft adapter folder (``PeftModel.from_pretrained``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .base import Edit, EditHandle, register_edit


@register_edit
class LowRankDelta(Edit):
    """``factors``: module path -> {"a": (r, in), "b": (out, r), "scale": float}; the layer's
    weight change is ``scale * b @ a``. Factors are kept in fp32 (as peft trains them)."""

    kind = "low_rank_delta"

    def __init__(self, factors: dict[str, dict[str, Any]], meta: dict[str, Any] | None = None):
        self.factors = {}
        for path, f in factors.items():
            a, b = f["a"].detach().to("cpu", torch.float32, copy=True), f["b"].detach().to("cpu", torch.float32, copy=True)
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise ValueError(f"low-rank edit: {path} has factors a {tuple(a.shape)} and b {tuple(b.shape)}, "
                                 "expected a (r, in) and b (out, r)")
            self.factors[path] = {"a": a.contiguous(), "b": b.contiguous(), "scale": float(f["scale"])}
        self.meta = dict(meta or {})

    @property
    def rank(self) -> int:
        return max((f["a"].shape[0] for f in self.factors.values()), default=0)

    def delta(self, path: str) -> torch.Tensor:
        """The dense fp32 weight change of one layer (out, in)."""
        f = self.factors[path]
        return f["scale"] * (f["b"] @ f["a"])

    def _modules(self, vlm: Any) -> dict[str, torch.nn.Linear]:
        modules = dict(vlm.model.named_modules())
        found = {}
        for path, f in self.factors.items():
            module = modules.get(path)
            if module is None:
                raise ValueError(f"low-rank edit does not fit this model: module {path} not found")
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(f"low-rank edit does not fit this model: {path} is a {type(module).__name__}, "
                                 "not a linear layer")
            if (module.out_features, module.in_features) != (f["b"].shape[0], f["a"].shape[1]):
                raise ValueError(f"low-rank edit does not fit this model: {path} has shape "
                                 f"{(module.out_features, module.in_features)}, the edit "
                                 f"{(f['b'].shape[0], f['a'].shape[1])}")
            found[path] = module
        return found

    def apply(self, vlm: Any) -> EditHandle:
        handles = []
        for path, module in self._modules(vlm).items():
            device = module.weight.device
            f = self.factors[path]
            a, b, scale = f["a"].to(device), f["b"].to(device), f["scale"]

            def add_adapter(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor, a=a, b=b, scale=scale):
                # As peft's unmerged LoRA: the adapter runs in its own (fp32) precision.
                x = inputs[0].to(a.dtype)
                return output + ((x @ a.T) @ b.T * scale).to(output.dtype)

            handles.append(module.register_forward_hook(add_adapter))

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return EditHandle(undo)

    def bake(self, vlm: Any) -> None:
        with torch.no_grad():
            for path, module in self._modules(vlm).items():
                weight = module.weight
                weight.copy_((weight.float() + self.delta(path).to(weight.device)).to(weight.dtype))

    @property
    def changed_parameters(self) -> int:
        """Weights the edit moves (every entry of each adapted matrix), as for a merged edit."""
        return sum(f["b"].shape[0] * f["a"].shape[1] for f in self.factors.values())

    @property
    def stored_parameters(self) -> int:
        """Numbers the edit holds: the factors."""
        return sum(f["a"].numel() + f["b"].numel() for f in self.factors.values())

    # --- persistence --------------------------------------------------------------------------
    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for path, f in self.factors.items():
            tensors[f"{path}.lora_A"], tensors[f"{path}.lora_B"] = f["a"], f["b"]
        save_file(tensors, str(folder / "factors.safetensors"))
        (folder / "scales.json").write_text(json.dumps({p: f["scale"] for p, f in self.factors.items()}, indent=1))

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "LowRankDelta":
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "factors.safetensors"))
        scales = json.loads((folder / "scales.json").read_text())
        missing = [p for p in scales if f"{p}.lora_A" not in tensors or f"{p}.lora_B" not in tensors]
        if missing:
            raise ValueError(f"{folder / 'factors.safetensors'}: no factors for {missing[:3]}")
        return cls({p: {"a": tensors[f"{p}.lora_A"], "b": tensors[f"{p}.lora_B"], "scale": s}
                    for p, s in scales.items()}, meta)

    def export_peft_adapter(self, folder: str | Path, base_model: str | None = None) -> Path:
        """Write a standard peft LoRA adapter folder (``adapter_config.json`` and
        ``adapter_model.safetensors``): ``PeftModel.from_pretrained(model, folder)`` on the model
        this edit was made on gives the same outputs as the edit applied."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        from ..utils import atomic_directory

        if not self.factors:
            raise ValueError("low-rank edit: no factors to export")
        ranks = {f["a"].shape[0] for f in self.factors.values()}
        # peft derives one scale per layer from (alpha, r); layers given their own rank/alpha by pattern.
        rank_pattern, alpha_pattern = {}, {}
        r = max(ranks)
        alpha = self.factors[next(iter(self.factors))]["scale"] * r
        for path, f in self.factors.items():
            layer_r = f["a"].shape[0]
            if layer_r != r:
                rank_pattern[path] = layer_r
            if abs(f["scale"] * layer_r - alpha) > 1e-6 * max(1.0, abs(alpha)):
                alpha_pattern[path] = f["scale"] * layer_r
        # Full module paths as an anchored regex: exactly these layers, never a same-named suffix.
        import re

        targets = "|".join(re.escape(p) for p in sorted(self.factors))
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=f"^({targets})$", rank_pattern=rank_pattern,
                            alpha_pattern=alpha_pattern, lora_dropout=0.0, bias="none",
                            base_model_name_or_path=base_model)
        with atomic_directory(folder) as tmp:
            config.save_pretrained(str(tmp))
            save_file({f"base_model.model.{p}.lora_{x.upper()}.weight": f[x].contiguous()
                       for p, f in self.factors.items() for x in ("a", "b")}, str(tmp / "adapter_model.safetensors"))
            (tmp / "README.md").write_text(f"LoRA adapter exported by mllm-unlearn (method: {self.meta.get('method')}); "
                                           "load with peft.PeftModel.from_pretrained(base_model, this_folder).\n")
        return Path(folder)
