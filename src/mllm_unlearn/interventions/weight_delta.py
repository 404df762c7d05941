"""WeightDelta: the changed tensors of a gradient-based edit (GA, GradDiff, NPO, ...)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import Edit, EditHandle, register_edit

# A tensor whose changed rows (or columns) hold at most this share of its entries is stored as
# those rows (columns) only: MIP-Editor retrains a few down-projection columns of a matrix.
SPARSE_SHARE = 0.5
_SPARSE_KEY = "#"  # "<name>#rows" / "<name>#columns" in the file; parameter names never hold '#'


@dataclass
class SparseSlices:
    """New values of some rows (``dim`` 0) or columns (``dim`` 1) of a 2-D parameter of ``shape``."""

    dim: int
    index: torch.Tensor  # int64, sorted
    values: torch.Tensor  # the slices' new values: (len(index), cols) or (rows, len(index))
    shape: tuple[int, int]

    @property
    def axis(self) -> str:
        return "rows" if self.dim == 0 else "columns"


@register_edit
class WeightDelta(Edit):
    """New values of the parameters a method changed. Applying swaps them in; removing swaps
    the originals back bit for bit (storing values, not differences, keeps it exact).

    ``tensors`` holds whole new values; ``sparse`` holds, for a 2-D parameter of which only a few
    rows or columns changed, the new values of those rows/columns only (``from_models`` picks
    that form by itself). Values may be stored in a higher precision than the model's (fp32
    master weights of a bf16 model): applying casts them, the edit keeps them exact."""

    kind = "weight_delta"

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None,
                 sparse: dict[str, SparseSlices] | None = None):
        # Own copies: a view of a live parameter would change when the model is restored.
        self.tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
        self.sparse = {name: SparseSlices(s.dim, s.index.detach().to("cpu", torch.int64, copy=True),
                                          s.values.detach().to("cpu", copy=True).contiguous(), tuple(s.shape))
                       for name, s in (sparse or {}).items()}
        for name, s in self.sparse.items():
            if s.dim not in (0, 1) or len(s.shape) != 2:
                raise ValueError(f"weight edit: {name} has a malformed {s.axis} record (dim {s.dim}, shape {s.shape})")
            size, other = s.shape[s.dim], s.shape[1 - s.dim]
            if s.index.numel() and (int(s.index.min()) < 0 or int(s.index.max()) >= size):
                raise ValueError(f"weight edit: {name} names {s.axis[:-1]} {int(s.index.max())} (or a negative one) "
                                 f"of a {s.shape[0]} x {s.shape[1]} tensor, which has {size} {s.axis}")
            expected = (s.index.numel(), other) if s.dim == 0 else (other, s.index.numel())
            if tuple(s.values.shape) != expected:
                raise ValueError(f"weight edit: {name} stores values of shape {tuple(s.values.shape)} for "
                                 f"{s.index.numel()} {s.axis}, expected {expected}")
        both = set(self.tensors) & set(self.sparse)
        if both:
            raise ValueError(f"weight edit: {sorted(both)[:3]} given both whole and as rows/columns")
        self.meta = dict(meta or {})

    @classmethod
    def from_models(cls, before: dict[str, torch.Tensor], model: torch.nn.Module, meta: dict[str, Any] | None = None,
                    trained: dict[str, torch.Tensor] | None = None, compact: bool = True) -> "WeightDelta":
        """The parameters of ``model`` that differ from the ``before`` snapshot (only names in
        ``before`` are compared). ``trained`` (name -> value) overrides the model's value of a
        parameter: the fp32 master weights of mixed-precision training, whose bf16 rounding the
        model holds. ``compact``: store a tensor whose changes lie in a few rows or columns as those."""
        trained = trained or {}
        dense, sparse = {}, {}
        for name, param in model.named_parameters():
            if name not in before:
                continue
            new = trained.get(name, param.detach()).to("cpu")
            old = before[name].to("cpu")
            if new.dtype != old.dtype:
                old = old.to(new.dtype)  # bf16 -> fp32 is exact
            if new.shape != old.shape:
                raise ValueError(f"{name}: shape {tuple(new.shape)} after training, {tuple(old.shape)} before")
            if torch.equal(old, new):
                continue
            slices = _changed_slices(old, new) if compact else None
            if slices is None:
                dense[name] = new
            else:
                sparse[name] = slices
        return cls(dense, meta, sparse)

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

    @property
    def names(self) -> list[str]:
        """Every parameter this edit changes."""
        return sorted([*self.tensors, *self.sparse])

    def new_values(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole new value of every changed parameter, the rows/columns of a sparse one written
        over ``base[name]`` (the values before the edit), in the stored precision."""
        out = dict(self.tensors)
        for name, s in self.sparse.items():
            full = base[name].detach().to("cpu", s.values.dtype, copy=True)
            full.index_copy_(s.dim, s.index, s.values)
            out[name] = full
        return out

    def apply(self, vlm: Any) -> EditHandle:
        params = dict(vlm.model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"weight edit does not fit this model: parameters {missing[:3]} not found")
        for name, value in self.tensors.items():
            if params[name].shape != value.shape:
                raise ValueError(f"weight edit does not fit this model: {name} has shape "
                                 f"{tuple(params[name].shape)}, the edit {tuple(value.shape)}")
        for name, s in self.sparse.items():
            if tuple(params[name].shape) != s.shape:
                raise ValueError(f"weight edit does not fit this model: {name} has shape "
                                 f"{tuple(params[name].shape)}, the edit {s.shape}")
        originals: dict[str, torch.Tensor] = {}
        slices: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}  # name -> (dim, index, original slices)
        with torch.no_grad():
            for name, value in self.tensors.items():
                originals[name] = params[name].detach().clone()
                params[name].copy_(value)
            for name, s in self.sparse.items():
                param = params[name]
                index = s.index.to(param.device)
                slices[name] = (s.dim, index, param.detach().index_select(s.dim, index))
                param.index_copy_(s.dim, index, s.values.to(param.device, param.dtype))

        def undo() -> None:
            with torch.no_grad():
                for name, value in originals.items():
                    params[name].copy_(value)
                for name, (dim, index, value) in slices.items():
                    params[name].index_copy_(dim, index, value)

        return EditHandle(undo)

    @property
    def changed_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values()) + sum(s.values.numel() for s in self.sparse.values())

    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        payload = dict(self.tensors)
        for name, s in self.sparse.items():
            key = f"{name}{_SPARSE_KEY}{s.axis}"
            payload.update({key: s.values, f"{key}.index": s.index, f"{key}.shape": torch.tensor(s.shape)})
        save_file(payload, str(folder / "weights.safetensors"))

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "WeightDelta":
        from safetensors.torch import load_file

        stored = load_file(str(folder / "weights.safetensors"))
        dense = {k: v for k, v in stored.items() if _SPARSE_KEY not in k}
        sparse = {}
        for key, values in stored.items():
            if _SPARSE_KEY not in key or key.endswith((".index", ".shape")):
                continue
            name, axis = key.rsplit(_SPARSE_KEY, 1)
            if axis not in ("rows", "columns") or f"{key}.index" not in stored or f"{key}.shape" not in stored:
                raise ValueError(f"{folder / 'weights.safetensors'}: malformed sparse entry {key!r}")
            shape = tuple(int(v) for v in stored[f"{key}.shape"].tolist())
            sparse[name] = SparseSlices(0 if axis == "rows" else 1, stored[f"{key}.index"], values, shape)  # type: ignore[arg-type]
        return cls(dense, meta, sparse)


def _changed_slices(old: torch.Tensor, new: torch.Tensor) -> SparseSlices | None:
    """The changed rows or columns of a 2-D tensor, when they hold at most ``SPARSE_SHARE`` of it."""
    if new.dim() != 2:
        return None
    differs = old != new
    best = None
    for dim in (0, 1):
        index = differs.any(dim=1 - dim).nonzero().flatten()
        share = index.numel() / new.shape[dim]
        if share <= SPARSE_SHARE and (best is None or share < best[0]):
            best = (share, dim, index)
    if best is None:
        return None
    _, dim, index = best
    return SparseSlices(dim, index, new.index_select(dim, index), (new.shape[0], new.shape[1]))
