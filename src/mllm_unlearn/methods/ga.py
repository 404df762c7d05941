"""Gradient ascent: maximise the forget answers' NLL (per-sequence token mean)."""
from __future__ import annotations

import torch

from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method


@register_method
class GradientAscent(GradientMethod):
    name = "ga"

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        return -sequence_nll(model, batch["forget"]).mean()
