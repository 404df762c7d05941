"""Reversible edits: weight changes, neuron masks and steering hooks, alone or composed."""
from .base import CompositeEdit, Edit, EditHandle, load_edit
from .low_rank import LowRankDelta
from .neuron_mask import NeuronMask
from .sequential import SequentialEdit, UndoNotExact
from .steering import RandomFeatures, Steering
from .weight_delta import WeightDelta

__all__ = ["CompositeEdit", "Edit", "EditHandle", "load_edit", "LowRankDelta", "NeuronMask", "RandomFeatures", "SequentialEdit", "Steering",
           "UndoNotExact", "WeightDelta"]
