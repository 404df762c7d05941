"""Negative preference optimisation (Zhang et al. 2024) on the forget answers.

L = -(2/beta) * log sigmoid(-beta * (log p(y_f|x_f) - log p_ref(y_f|x_f))), per sequence with
summed answer log-probabilities, plus an optional retain NLL term (``retain_term``).

The reference is selectable (``extra["reference"]``): ``vanilla`` (the model before
unlearning, as the NPO paper does), ``retain-finetuned`` (a model trained like the vanilla one
but without the forget people, what MLLMU-Bench's and MIP-Editor's scripts use; the pipeline
trains and caches it) or the path of a local checkpoint.
Reference log-probabilities of the forget set are computed once before training, so no
second model is held during training.

Retain data (``retain_term`` only; MMUnlearner's NPO has none): each forget item is paired
with a retain item of its modality, cycled through seeded shuffles of the whole retain set
(``methods.base.RetainCycler``), so every retain item is seen within ceil(|retain| / |forget|) epochs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..models.base import VLM
from ..training.losses import npo_loss, sequence_logprob, sequence_nll
from .base import GradientMethod, MethodConfig, answer_logprobs, register_method


@register_method
class NPO(GradientMethod):
    name = "npo"
    # Hyperparameters (docs/methods.md#presets).
    tiny_preset = {"lr": 2e-4, "epochs": 2, "extra": {"beta": 0.4, "reference": "vanilla"}}
    # NPO's β = 0.4. The benchmarks' reference is a retain-only fine-tune the tool cannot train for
    # a user's checkpoint: the vanilla model unless -o reference=PATH names one.
    paper_preset = {"lr": 1e-5, "epochs": 1, "batch_size": 4, "extra": {"beta": 0.4, "reference": "vanilla"}}
    search_space = {"lr": ("log", 1e-4, 3e-3), "epochs": ("int", 1, 4), "extra.beta": ("log", 0.05, 2.0)}
    option_names = ("beta", "reference", "retain_term")

    def __init__(self) -> None:
        self.reference_logprobs: torch.Tensor | None = None

    @staticmethod
    def options(cfg: MethodConfig) -> tuple[float, str, bool]:
        beta = float(cfg.extra.get("beta", 0.4))
        reference = str(cfg.extra.get("reference", "vanilla"))
        if reference == "retain-finetuned":
            raise ValueError("npo: reference 'retain-finetuned' is trained and resolved by the pipeline "
                             "(mllm-unlearn run); through the Python API pass the checkpoint's path "
                             "(pipeline.prepare_retain_model builds and caches it)")
        if reference != "vanilla" and not (Path(reference) / "config.json").is_file():
            raise ValueError(f"npo: reference must be 'vanilla' or a local checkpoint directory; "
                             f"{reference!r} has no config.json")
        if beta <= 0:
            raise ValueError(f"npo: beta must be > 0, got {beta}")
        return beta, reference, bool(cfg.extra.get("retain_term", False))

    def needs_retain(self, cfg: MethodConfig) -> bool:
        return self.options(cfg)[2]

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        _, reference, _ = self.options(cfg)
        if reference == "vanilla":
            self.reference_logprobs = answer_logprobs(vlm.model, forget, encoder, cfg.batch_size)
            return
        from ..models.base import load_vlm

        other = load_vlm(reference, device=str(vlm.device), dtype=str(next(vlm.model.parameters()).dtype).split(".")[-1])
        if other.processor.tokenizer.get_vocab() != vlm.processor.tokenizer.get_vocab():
            raise ValueError(f"npo: reference checkpoint {reference} has another tokenizer than the model being unlearned")
        self.reference_logprobs = answer_logprobs(other.model, forget, encoder, cfg.batch_size)
        del other

    def cleanup(self) -> None:
        self.reference_logprobs = None

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        if self.reference_logprobs is None:
            raise RuntimeError("npo: no reference log-probabilities; prepare() was not called")
        beta, _, retain_term = self.options(cfg)
        reference = self.reference_logprobs.to(batch["forget_index"].device)[batch["forget_index"]]
        value = npo_loss(sequence_logprob(model, batch["forget"]), reference, beta).mean()
        if retain_term:
            value = value + cfg.retain_weight * sequence_nll(model, batch["retain"]).mean()
        return value
