"""RMU, representation misdirection (Li et al. 2024, WMDP), for a VLM's language model.

Forget inputs' hidden states at LM layer ``layer`` are pushed towards c·u (u a random unit
vector drawn with the run's seed, uniform as in WMDP's code); retain inputs' hidden states
are kept near the frozen model's (weight ``alpha``). Only the parameters matched by
``trainable`` are updated (default: the down projections of layers layer-2..layer, WMDP's choice).

Coefficients are relative to the model, so one default serves tiny and 7B models alike:
c = ``steering_coeff`` × the mean token norm of the vanilla model's forget hidden states at
that layer, and both mean-squared errors are divided by that norm² / hidden size. Positions
scored: every non-padding token of the input (prompt, image and answer).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..models.base import VLM, _module_path
from ..training.losses import model_inputs
from .base import GradientMethod, MethodConfig, frozen_copy, item_batches, register_method


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over hidden dims, then over each sequence's unmasked tokens, then over the batch."""
    per_token = ((hidden.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


@register_method
class RMU(GradientMethod):
    name = "rmu"
    uses_retain = True
    option_names = ("layer", "steering_coeff", "alpha", "trainable")

    def __init__(self) -> None:
        self.reference: torch.nn.Module | None = None
        self.captured: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        self.target: torch.Tensor | None = None
        self.scale = 1.0

    @staticmethod
    def options(vlm: VLM, cfg: MethodConfig) -> tuple[int, float, float, str]:
        layers = vlm.adapter.lm_layers(vlm.model)
        layer = int(cfg.extra.get("layer", max(1, len(layers) // 4)))
        if not 0 <= layer < len(layers):
            raise ValueError(f"rmu: layer must be in [0, {len(layers) - 1}] for this model, got {layer}")
        base = re.escape(_module_path(vlm.model, layers))
        default = rf"(.*\.)?{base}\.({'|'.join(str(i) for i in range(max(0, layer - 2), layer + 1))})\.mlp\.down_proj\..*"
        return (layer, float(cfg.extra.get("steering_coeff", 2.0)), float(cfg.extra.get("alpha", 100.0)),
                str(cfg.extra.get("trainable", default)))

    def trainable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        pattern = self.options(vlm, cfg)[3]
        names = [n for n, _ in vlm.model.named_parameters()]
        if not any(re.fullmatch(pattern, n) for n in names):
            raise ValueError(f"rmu: trainable pattern {pattern!r} matches no parameter of this model")
        if cfg.lora is not None:
            return None  # peft's adapters on the LoRA targets are what trains
        return lambda name, _: re.fullmatch(pattern, name) is not None

    def _hook(self, module: torch.nn.Module, key: str) -> None:
        def store(_module: Any, _inputs: Any, output: Any) -> None:
            self.captured[key] = _hidden(output)

        self.handles.append(module.register_forward_hook(store))

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        layer, coeff, _, _ = self.options(vlm, cfg)
        self.reference = frozen_copy(vlm.model)
        self._hook(vlm.adapter.lm_layers(vlm.model)[layer], "model")
        self._hook(vlm.adapter.lm_layers(self.reference)[layer], "reference")
        # Typical size of the layer's hidden states on the forget data, from the vanilla model.
        norms, squares, count = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in item_batches(forget, encoder, cfg.batch_size, vlm.device):
                self.reference(**model_inputs(batch))
                hidden = self.captured.pop("reference").float()
                mask = batch["attention_mask"].bool()
                tokens = hidden[mask]
                norms += tokens.norm(dim=-1).sum().item()
                squares += tokens.pow(2).sum(dim=-1).sum().item()
                count += tokens.shape[0]
        width = tokens.shape[-1]
        mean_norm = norms / count
        self.scale = squares / count / width  # mean squared norm per hidden dim
        generator = torch.Generator().manual_seed(cfg.seed)
        direction = torch.rand(width, generator=generator)
        self.target = (coeff * mean_norm * direction / direction.norm()).to(vlm.device)

    def cleanup(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.captured, self.reference, self.target = [], {}, None, None

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        if self.reference is None or self.target is None:
            raise RuntimeError("rmu: prepare() was not called")
        alpha = float(cfg.extra.get("alpha", 100.0))
        forget, retain = batch["forget"], batch["retain"]
        model(**model_inputs(forget))
        forget_hidden = self.captured.pop("model")
        forget_loss = masked_mse(forget_hidden, self.target.expand_as(forget_hidden), forget["attention_mask"])
        model(**model_inputs(retain))
        retain_hidden = self.captured.pop("model")
        with torch.no_grad():
            self.reference(**model_inputs(retain))
            reference_hidden = self.captured.pop("reference")
        retain_loss = masked_mse(retain_hidden, reference_hidden, retain["attention_mask"])
        return (forget_loss + alpha * retain_loss) / self.scale
