"""SequentialEdit: the edit of K deletion requests made one after another (``mllm-unlearn sequence``).

A ``CompositeEdit`` whose part k is request k's edit, made on the model with earlier parts applied
(those named in its ``depends_on``), so applying the parts in order gives the sequential model.
``meta["requests"][k]`` names each part's request: its index (0-based), people and what it was
computed on. It saves, loads, applies, removes, bakes and exports as any composite.

Undo (``without``): dropping request j's part gives exactly the model as if j had never been
requested when no later part was computed with j's part applied (``depends_on``): neuron masks
(MANU) and steering (MLLMEraser) parts of a sequence whose parts are all activation-level are each
computed on the unedited model, so they never depend on one another and removal is exact (bit
for bit the same forward passes as the sequence without j). A weight change trained on top of j
(GA, GradDiff, MIP-Editor's retrained columns, ...) depends on j through its gradients: it can
only be undone approximately here (``approximate=True``: j's own weight change is subtracted from
the later parts' values of the same parameters, task arithmetic), or exactly by running the
later requests again without j (``sequence.replay_without``, ``--undo N --replay``).
"""
from __future__ import annotations

from typing import Any

import torch

from .base import CompositeEdit, Edit, register_edit

# Edit kinds that act on activations through hooks, leaving every weight as it is.
ACTIVATION_KINDS = ("neuron_mask", "steering")


def leaves(edit: Edit) -> list[Edit]:
    """The non-composite edits inside ``edit``, in application order."""
    if isinstance(edit, CompositeEdit):
        return [leaf for part in edit.parts for leaf in leaves(part)]
    return [edit]


def changes_weights(edit: Edit) -> bool:
    """Whether applying ``edit`` changes (or adds to) weights, as opposed to hooks on activations only."""
    return any(leaf.kind not in ACTIVATION_KINDS for leaf in leaves(edit))


class UndoNotExact(ValueError):
    """Request j's part cannot be removed exactly: later parts were computed with it applied."""


@register_edit
class SequentialEdit(CompositeEdit):
    """Per-request parts applied in order; ``meta["requests"]`` describes each part (see module)."""

    kind = "sequential"

    def __init__(self, parts: list[Edit], meta: dict[str, Any] | None = None):
        super().__init__(parts, meta)
        requests = self.meta.setdefault("requests", [{"index": k, "people": [], "depends_on": list(range(k))}
                                                     for k in range(len(self.parts))])
        if len(requests) != len(self.parts):
            raise ValueError(f"sequential edit: {len(self.parts)} parts but {len(requests)} request records")

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.meta["requests"]

    def dependants(self, j: int) -> list[int]:
        """Positions of the parts computed with part ``j`` applied."""
        target = self.requests[j]["index"]
        return [k for k, r in enumerate(self.requests) if k > j and target in r.get("depends_on", [])]

    def exact_undo(self, j: int) -> bool:
        """Whether ``without(j)`` is exactly the sequence without request ``j`` (no later part depends on it)."""
        return not self.dependants(j)

    def position_of(self, request: int) -> int:
        """The part position of request number ``request`` (its ``index``, 0-based, as first numbered)."""
        for k, r in enumerate(self.requests):
            if r["index"] == request:
                return k
        raise ValueError(f"this sequential edit has no request {request}; it holds requests "
                         f"{[r['index'] for r in self.requests]}")

    def without(self, request: int, vlm: Any = None, approximate: bool = False) -> "SequentialEdit":
        """The edit as if request ``request`` (its 0-based index; reports and the CLI count from 1)
        had never been made.

        Exact when no later part was computed with its part applied (``exact_undo``). Otherwise
        ``UndoNotExact``, unless ``approximate``: then request j's own weight change (its values
        minus the values before it, read by applying the earlier parts to ``vlm``, the unedited
        model) is subtracted from every later part's value of the same parameters, and later
        activation parts are kept as they are. The result's meta records what was done."""
        j = self.position_of(request)
        if len(self.parts) == 1:
            raise ValueError("a sequential edit of one request has nothing left without it: use no edit at all")
        later = self.dependants(j)
        parts = [p for k, p in enumerate(self.parts) if k != j]
        requests = [dict(r) for k, r in enumerate(self.requests) if k != j]
        for r in requests:  # the remaining parts no longer sit on the removed request
            r["depends_on"] = [d for d in r.get("depends_on", []) if d != request]
        undo = {"removed_request": request, "people": self.requests[j].get("people", []), "exact": not later}
        if later:
            names = [self.requests[k]["index"] for k in later]
            if not approximate:
                numbers = ", ".join(str(n + 1) for n in names)  # 1-based, as reports number requests
                raise UndoNotExact(
                    f"request {request + 1}'s part cannot be removed exactly: the parts of requests {numbers} were "
                    "computed on the model with it applied (trained on top of it). Remove it approximately "
                    "(approximate=True / --approximate: its weight change is subtracted from theirs), or exactly by "
                    "running the later requests again without it (--replay)")
            if vlm is None:
                raise ValueError("an approximate undo needs the unedited model (vlm) to read the removed request's "
                                 "weight change")
            change = self._weight_change(j, vlm)
            position = {k: n for n, k in enumerate(k for k in range(len(self.parts)) if k != j)}
            for k in later:
                parts[position[k]] = _subtract_change(self.parts[k], change)
            undo["approximation"] = ("task arithmetic: the removed request's own weight change subtracted from the "
                                     f"later parts' values of the same parameters ({len(change)} tensors)")
            undo["dependants"] = names
        meta = {**self.meta, "requests": requests, "undone": [*self.meta.get("undone", []), undo]}
        return SequentialEdit(parts, meta)

    def _weight_change(self, j: int, vlm: Any) -> dict[str, torch.Tensor]:
        """Part ``j``'s weight change on the model it was applied to: its values minus the values
        the earlier parts left (dense fp32 per parameter name)."""
        from .weight_delta import WeightDelta

        earlier = CompositeEdit(self.parts[:j]) if j else None
        handle = earlier.apply(vlm) if earlier is not None else None
        try:
            params = dict(vlm.model.named_parameters())
            change: dict[str, torch.Tensor] = {}
            for leaf in leaves(self.parts[j]):
                if isinstance(leaf, WeightDelta):
                    before = {n: params[n].detach().cpu().float() for n in leaf.names}
                    for name, value in leaf.new_values(before).items():
                        change[name] = change.get(name, 0) + value.float() - before[name]
                elif leaf.kind not in ACTIVATION_KINDS:
                    raise ValueError(f"approximate undo: a {leaf.kind} part's weight change cannot be read "
                                     "(only weight_delta parts are supported)")
        finally:
            if handle is not None:
                handle.remove()
        return change


def _subtract_change(edit: Edit, change: dict[str, torch.Tensor]) -> Edit:
    """``edit`` with ``change`` subtracted from the values it sets (weight parts; others unchanged)."""
    from .weight_delta import SparseSlices, WeightDelta

    if isinstance(edit, CompositeEdit):
        return type(edit)([_subtract_change(p, change) for p in edit.parts], edit.meta)
    if not isinstance(edit, WeightDelta):
        return edit
    tensors = {n: (v.float() - change[n]).to(v.dtype) if n in change else v for n, v in edit.tensors.items()}
    sparse = {}
    for name, s in edit.sparse.items():
        values = s.values
        if name in change:
            values = (values.float() - change[name].index_select(s.dim, s.index)).to(values.dtype)
        sparse[name] = SparseSlices(s.dim, s.index, values, s.shape)
    return WeightDelta(tensors, edit.meta, sparse)

