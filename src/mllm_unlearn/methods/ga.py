"""Gradient ascent: maximise the forget answers' NLL (per-sequence token mean)."""
from __future__ import annotations

import torch

from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method


@register_method
class GradientAscent(GradientMethod):
    name = "ga"
    # Hyperparameters (docs/methods.md#presets; sweeps behind them: docs/preset-history.md#ga).
    tiny_preset = {"lr": 5e-4, "epochs": 2}
    # MLLMU-Bench's baselines (MMUnlearner's copies): AdamW lr 1e-5, batch 4, 1 epoch.
    paper_preset = {"lr": 1e-5, "epochs": 1, "batch_size": 4}
    search_space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4)}

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        return -sequence_nll(model, batch["forget"]).mean()
