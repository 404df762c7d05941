"""Reversible edits: weight changes (and, later, neuron masks and steering hooks)."""
from .base import Edit, EditHandle, load_edit
from .weight_delta import WeightDelta

__all__ = ["Edit", "EditHandle", "load_edit", "WeightDelta"]
