"""KL minimisation: ascend on forget, descend on retain, and keep the retain answers'
next-token distributions close to the frozen vanilla model's:
L = -NLL_f + lambda * (NLL_r + KL(p_vanilla || p_model) on retain answer tokens).

Retain data: each forget item is paired with a retain item of its modality, cycled through
seeded shuffles of the whole retain set (``methods.base.RetainCycler``): the forget set defines an
epoch, and every retain item is seen within ceil(|retain| / |forget|) epochs.
MLLMU-Bench's released loop (``MLLMU_KL_Min.py``) runs over the retain batches, as GradDiff's.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..models.base import VLM
from ..training.losses import answer_kl, answer_logits, answer_nll_from_logits, predicting_mask, sequence_nll
from .base import GradientMethod, MethodConfig, frozen_copy, register_method


@register_method
class KLMinimisation(GradientMethod):
    name = "kl"
    # Hyperparameters (docs/methods.md#presets).
    tiny_preset = {"lr": 2e-4, "epochs": 2, "retain_weight": 1.0}
    paper_preset = {"lr": 1e-5, "epochs": 1, "batch_size": 4, "retain_weight": 1.0}  # MLLMU-Bench's baselines
    search_space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4), "retain_weight": ("log", 0.3, 10.0)}
    uses_retain = True

    def __init__(self) -> None:
        self.reference: torch.nn.Module | None = None

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        self.reference = frozen_copy(vlm.model)

    def cleanup(self) -> None:
        self.reference = None

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("kl: no reference model; prepare() was not called")
        forget = sequence_nll(model, batch["forget"]).mean()
        retain_batch = batch["retain"]
        labels = retain_batch["labels"]
        # Answer-only logits (LM head at the answer-predicting positions), the same positions for both models.
        where = predicting_mask(labels)
        logits = answer_logits(model, retain_batch, where)
        nll, mask = answer_nll_from_logits(logits, labels)
        retain_nll = (nll.sum(dim=1) / mask.sum(dim=1)).mean()
        with torch.no_grad():
            reference_logits = answer_logits(self.reference, retain_batch, where)
        kl = answer_kl(reference_logits, logits, labels).mean()
        return -forget + cfg.retain_weight * (retain_nll + kl)
