"""Gradient difference: ascend on forget, descend on retain: L = -NLL_f + lambda * NLL_r.

One summed loss per step, as MIP-Editor's ``ga_difference_training``. Retain data: each forget item is paired with a
retain item of its modality, cycled through
seeded shuffles of the whole retain set (``methods.base.RetainCycler``): the forget set defines an
epoch, and every retain item is seen within ceil(|retain| / |forget|) epochs.
MLLMU-Bench's released loop (``MLLMU_GA_Diff.py``) instead runs one epoch over the retain
batches, a retain step each, with a forget step every floor(|R|/|F|) of them.
"""
from __future__ import annotations

import torch

from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method


@register_method
class GradDiff(GradientMethod):
    name = "graddiff"
    # Hyperparameters (docs/methods.md#presets).
    tiny_preset = {"lr": 2e-4, "epochs": 2, "retain_weight": 1.0}
    paper_preset = {"lr": 1e-5, "epochs": 1, "batch_size": 4, "retain_weight": 1.0}  # MLLMU-Bench's baselines
    search_space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4), "retain_weight": ("log", 0.3, 10.0)}
    uses_retain = True

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        forget = sequence_nll(model, batch["forget"]).mean()
        retain = sequence_nll(model, batch["retain"]).mean()
        return -forget + cfg.retain_weight * retain
