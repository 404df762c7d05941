"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning", arXiv 2410.07163): NPO without a reference model, on length-normalised likelihoods.

L = forget_weight * -(2/beta) * log sigmoid(beta * (NLL_f - delta)) + retain_weight * NLL_r,

per sequence, NLL the token mean over the answer (``sequence_nll``): the reward is the answer's
average log-likelihood, so long answers are not forgotten faster than short ones, and no reference
pass is needed. As in the released code (``TOFU/dataloader.py``), the margin ``delta`` is
subtracted before scaling by ``beta`` (the paper writes it outside, ``beta * NLL - gamma``; with the
default 0 both agree). Retain data: each forget item is paired with a retain item of its modality
(``methods.base.RetainCycler``); ``retain_weight`` 0 drops the retain term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method


@register_method
class SimNPO(GradientMethod):
    name = "simnpo"
    # Hyperparameters (docs/methods.md#presets). Tiny: NPO's tiny lr and epochs (not swept yet:
    # `benchmarks/derive_presets.py --methods simnpo` writes a sweep's choice into tiny_presets.json).
    tiny_preset = {"lr": 2e-4, "epochs": 2, "retain_weight": 1.0, "extra": {"beta": 2.5, "delta": 0.0, "forget_weight": 1.0}}
    # The released TOFU forget10 settings (Unlearn-Simple TOFU/README.md and config/forget.yaml): lr 1e-5,
    # 20 epochs, beta 4.5, forget coefficient 0.125, retain NLL coefficient 1, margin 0.
    paper_preset = {"lr": 1e-5, "epochs": 20, "batch_size": 4, "retain_weight": 1.0,
                    "extra": {"beta": 4.5, "delta": 0.0, "forget_weight": 0.125}}
    search_space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4), "extra.beta": ("log", 0.5, 10.0),
                    "retain_weight": ("log", 0.3, 10.0)}
    option_names = ("beta", "delta", "forget_weight")

    @staticmethod
    def options(cfg: MethodConfig) -> tuple[float, float, float]:
        beta = float(cfg.extra.get("beta", 2.5))
        delta = float(cfg.extra.get("delta", 0.0))
        forget_weight = float(cfg.extra.get("forget_weight", 1.0))
        if beta <= 0:
            raise ValueError(f"simnpo: beta must be > 0, got {beta}")
        if forget_weight <= 0:
            raise ValueError(f"simnpo: forget_weight must be > 0, got {forget_weight}")
        return beta, delta, forget_weight

    def check_options(self, cfg: MethodConfig) -> None:
        super().check_options(cfg)
        self.options(cfg)
        if cfg.retain_weight < 0:
            raise ValueError(f"simnpo: retain_weight must be >= 0, got {cfg.retain_weight}")

    def needs_retain(self, cfg: MethodConfig) -> bool:
        return cfg.retain_weight > 0

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        beta, delta, forget_weight = self.options(cfg)
        forget_nll = sequence_nll(model, batch["forget"])  # per sequence, token mean over the answer
        value = forget_weight * (-(2.0 / beta) * F.logsigmoid(beta * (forget_nll - delta))).mean()
        if self.needs_retain(cfg):
            value = value + cfg.retain_weight * sequence_nll(model, batch["retain"]).mean()
        return value
