"""Gradient difference: ascend on forget, descend on retain: L = -NLL_f + lambda * NLL_r."""
from __future__ import annotations

import torch

from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method


@register_method
class GradDiff(GradientMethod):
    name = "graddiff"
    uses_retain = True

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        forget = sequence_nll(model, batch["forget"]).mean()
        retain = sequence_nll(model, batch["retain"]).mean()
        return -forget + cfg.retain_weight * retain
