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
from ..training.sharding import in_sharded_training
from ..training.truncated import hidden_at_layer, truncated_reference
from .base import GradientMethod, MethodConfig, item_batches, register_method


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over hidden dims, then over each sequence's unmasked tokens, then over the batch."""
    per_token = ((hidden.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


class Misdirection:
    """RMU's machinery, shared with MIP-Editor's RMisU: the hidden states of one LM layer in the
    trained model and in a frozen copy, and the steering target c·u.

    u is uniform in [0, 1)^d (WMDP's code) normalised to unit length, drawn with ``seed``;
    c = ``coeff`` × the mean token norm of the frozen model's forget hidden states at the layer;
    ``scale`` (that norm² per hidden dim) makes the MSEs of every model size comparable.
    """

    def __init__(self) -> None:
        self.reference: torch.nn.Module | None = None
        self.adapter: Any = None
        self.layer = 0
        self.target: torch.Tensor | None = None
        self.scale = 1.0

    def start(self, vlm: VLM, layer: int, coeff: float, forget: Sequence[Item], encoder: Encoder, batch_size: int,
              seed: int) -> None:
        """Call on the untouched model: the frozen copy is the reference of the retain loss.

        Forwards stop at ``layer`` and the copy holds only what feeds it (``training.truncated``)."""
        self.adapter, self.layer = vlm.adapter, layer
        # Sharded (--shard fsdp): the caller's model does not change while its sharded copy trains,
        # so it is the reference itself (training/sharding.py), no copy at all.
        self.reference = vlm.model.eval() if in_sharded_training() else \
            truncated_reference(vlm.model, vlm.adapter, layer)
        # Typical size of the layer's hidden states on the forget data, from the vanilla model.
        norms, squares, count = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in item_batches(forget, encoder, batch_size, vlm.device):
                tokens = self.reference_hidden(batch).float()[batch["attention_mask"].bool()]
                norms += tokens.norm(dim=-1).sum().item()
                squares += tokens.pow(2).sum(dim=-1).sum().item()
                count += tokens.shape[0]
        width = tokens.shape[-1]
        self.scale = squares / count / width  # mean squared norm per hidden dim
        generator = torch.Generator().manual_seed(seed)
        direction = torch.rand(width, generator=generator)
        self.target = (coeff * norms / count * direction / direction.norm()).to(vlm.device)

    def hidden(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hidden_at_layer(model, self.adapter, self.layer, batch)

    @torch.no_grad()
    def reference_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("misdirection: start() was not called")
        return hidden_at_layer(self.reference, self.adapter, self.layer, batch)

    def forget_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """MSE of the forget hidden states to c·u at ``mask``'s positions, divided by ``scale``."""
        if self.target is None:
            raise RuntimeError("misdirection: start() was not called")
        hidden = self.hidden(model, batch)
        return masked_mse(hidden, self.target.expand_as(hidden), mask) / self.scale

    def retain_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE of the retain hidden states to the frozen model's (non-padding tokens), divided by ``scale``."""
        return masked_mse(self.hidden(model, batch), self.reference_hidden(batch), batch["attention_mask"]) / self.scale

    def stop(self) -> None:
        self.reference, self.target = None, None


@register_method
class RMU(GradientMethod):
    name = "rmu"
    uses_retain = True
    option_names = ("layer", "steering_coeff", "alpha", "trainable")

    def __init__(self) -> None:
        self.steer = Misdirection()

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

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        layer, coeff, _, _ = self.options(vlm, cfg)
        self.steer.start(vlm, layer, coeff, forget, encoder, cfg.batch_size, cfg.seed)

    def cleanup(self) -> None:
        self.steer.stop()

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        alpha = float(cfg.extra.get("alpha", 100.0))
        forget = batch["forget"]
        return self.steer.forget_loss(model, forget, forget["attention_mask"]) + alpha * self.steer.retain_loss(
            model, batch["retain"])
