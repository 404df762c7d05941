"""MMUnlearner (Huo et al., arXiv 2502.11051): erase an entity's visual concept while keeping
the textual knowledge, by gradient ascent restricted to weights salient for the forget data.

1. Diagonal Fisher (fp32, mean of squared mini-batch gradients) of the forget VQA loss, F_f,
   and of a preserve loss, F_p, over the weights of the chosen tower.
2. Saliency mask M = (F_f + 1e-15) / (F_p + 1e-15) >= gamma (default 1), per weight.
   - ``mask=language`` (the paper's main runs): language-model linear weights; preserve =
     text-only QA of *all* people (forget people included; built by ``data.text_forms`` where the
     data has no text-only pairs) + retain VQA.
   - ``mask=vision``: vision tower + projector linear weights (the vision layers the model
     never reads, e.g. LLaVA's last, left out); preserve = retain VQA.
   - ``mask=both``: both towers, each with its own preserve set.
3. Each step: a forget phase (ascent on forget VQA, gradient masked by M) then a retain phase
   (descent on retain data, unmasked), as the released code alternates them.

Fixed relative to the released code (see research notes): the phases have separate AdamW
states, so retain-phase momentum never moves weights the mask excludes from forgetting;
only the chosen tower's linear weights train at all (the code gave norms, embeddings,
lm_head and the other tower unmasked ascent); masks are computed in fp32 (1e-15 underflows in
fp16/bf16). Masks are saved with ``save_mask`` and reused with ``mask_file``; a mask whose
parameter names or shapes do not fit the model is refused.

With LoRA (``cfg.lora``), the released code's mask silently matched nothing (peft renames the
parameters). Here each tower weight gets two low-rank adapters through a parametrization,
W + s·M⊙(B_f A_f) + s·(B_r A_r): the forget adapter's update is confined to the salient
weights by construction, the retain adapter (unmasked, as full fine-tuning's retain phase)
trains only in the retain phase. peft cannot express an element-wise mask, hence our own
adapters; rank and alpha come from the LoRA options, the target pattern filters the tower's
linear layers (the default pattern means all of them).

Retain data: the released loop runs one epoch over the retain batches, a retain step each,
with a forget step every floor(|R|/|F|) of them. Here the forget set defines an epoch and each
step takes one forget phase and one retain phase, each forget item paired with a retain item
of its modality, cycled through seeded shuffles of the whole retain set
(``methods.base.RetainCycler``): the forget items are VQA, so the retain phase sees the retain
VQA items, all of them within ceil(|retain VQA| / |forget VQA|) epochs (earlier versions drew
retain items of either modality at random).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..data.text_forms import text_only_items
from ..interventions import Edit
from ..models.base import VLM
from ..training.batching import item_batch_parts
from ..training.fisher import diagonal_fisher
from ..training.losses import sequence_nll
from .base import GradientMethod, MethodConfig, register_method

MASKS = ("language", "vision", "both")


class MaskedLowRankDelta(torch.nn.Module):
    """Parametrization W -> W + scale·(mask ⊙ (forget_b @ forget_a)) + scale·(retain_b @ retain_a).

    LoRA's initialisation (A uniform in ±1/sqrt(in), B zero), so the weight starts unchanged."""

    def __init__(self, mask: torch.Tensor, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        out_features, in_features = mask.shape
        bound = 1.0 / in_features ** 0.5
        self.register_buffer("mask", mask.bool())  # 1 byte an entry; multiplying promotes it exactly
        for phase in ("forget", "retain"):
            a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            self.register_parameter(f"{phase}_a", torch.nn.Parameter(a.to(mask.device)))
            self.register_parameter(f"{phase}_b", torch.nn.Parameter(torch.zeros(out_features, rank, device=mask.device)))
        self.scale = alpha / rank
        self.training_phase = "forget"  # the adapter that receives gradients now

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        forget = self.mask * (self.forget_b @ self.forget_a)
        retain = self.retain_b @ self.retain_a
        # The other phase's adapter is a constant: no gradient, so clipping and AdamW ignore it.
        forget, retain = (forget, retain.detach()) if self.training_phase == "forget" else (forget.detach(), retain)
        return weight + (self.scale * (forget + retain)).to(weight.dtype)


def saliency_mask(forget_fisher: dict[str, torch.Tensor], preserve_fisher: dict[str, torch.Tensor],
                  gamma: float) -> dict[str, torch.Tensor]:
    """True where the forget Fisher outweighs the preserve Fisher by ``gamma`` (fp32, eps 1e-15):
    bool masks, computed tensor by tensor (each pair of Fisher tensors freed once used)."""
    return {name: ((forget_fisher[name].float() + 1e-15) / (preserve_fisher[name].float() + 1e-15) >= gamma)
            for name in forget_fisher}


@register_method
class MMUnlearner(GradientMethod):
    name = "mmunlearner"
    # Hyperparameters (docs/methods.md#presets). Tiny: the vision mask (ascent confined to the salient
    # weights of the vision tower and projector cannot touch text-only answers).
    tiny_preset = {"lr": 1e-3, "epochs": 2, "extra": {"mask": "vision", "gamma": 1.0}}
    # The paper: lr 1e-5, batch 4, 1 epoch, γ = 1, the language mask for the main runs.
    paper_preset = {"lr": 1e-5, "epochs": 1, "batch_size": 4, "extra": {"mask": "language", "gamma": 1.0}}
    search_space = {"lr": ("log", 2e-4, 5e-3), "epochs": ("int", 1, 4), "extra.gamma": ("float", 0.5, 2.0)}
    uses_retain = True
    phases = ("forget", "retain")
    option_names = ("mask", "gamma", "mask_file", "save_mask")

    def __init__(self) -> None:
        self.mask: dict[str, torch.Tensor] = {}
        self.params: dict[str, torch.nn.Parameter] = {}
        self.all_forget: Sequence[Item] = ()
        self.stats: dict[str, Any] = {}

    @staticmethod
    def options(cfg: MethodConfig) -> tuple[str, float]:
        mask = str(cfg.extra.get("mask", "language"))
        if mask not in MASKS:
            raise ValueError(f"mmunlearner: mask must be one of {MASKS}, got {mask!r}")
        return mask, float(cfg.extra.get("gamma", 1.0))

    def tower_parameters(self, vlm: VLM, tower: str) -> dict[str, torch.nn.Parameter]:
        """Linear-layer weights of a tower as the adapter declares it (vision: encoder + projector,
        without layers the model never reads; language: the decoder layers); norms, embeddings
        and lm_head excluded."""
        params = vlm.adapter.tower_parameters(vlm.model, tower)
        linear = {f"{name}.weight" for name, m in vlm.model.named_modules() if isinstance(m, torch.nn.Linear)}
        return {name: param for name, param in params.items() if name in linear}

    def unlearn(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig) -> Edit:
        self.options(cfg)
        self.all_forget = list(forget)
        forget_vqa = [i for i in forget if i.modality == "vqa"]
        if not forget_vqa:
            raise ValueError("mmunlearner: the forget set has no image + question (VQA) items to forget")
        return super().unlearn(vlm, forget_vqa, retain, cfg)

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        mask_kind, gamma = self.options(cfg)
        towers = ["language", "vision"] if mask_kind == "both" else [mask_kind]
        self.params = {n: p for tower in towers for n, p in self.tower_parameters(vlm, tower).items()}
        mask_file = cfg.extra.get("mask_file")
        if mask_file:
            self.mask = load_mask(mask_file, self.params)
        else:
            retain_vqa = [i for i in retain if i.modality == "vqa"]
            # Text-only QA of all people: the data's own, else the image pairs with the person named.
            text_qa = text_only_items(list(self.all_forget) + list(retain), f"{self.name} (mask={mask_kind})",
                                      "forget and retain") if "language" in towers else []
            preserve = {"language": text_qa + retain_vqa, "vision": retain_vqa}

            def batches(items: Sequence[Item]):  # each batch as its token-bounded parts (cfg.max_batch_tokens)
                return item_batch_parts(items, encoder, cfg.batch_size, vlm.device, cfg.max_batch_tokens)

            self.mask = {}
            for tower in towers:
                params = self.tower_parameters(vlm, tower)
                if not preserve[tower]:
                    raise ValueError(f"mmunlearner: no preserve data for the {tower} mask")
                loss = lambda m, b: sequence_nll(m, b).mean()  # noqa: E731  (sign is irrelevant for g²)
                # Each Fisher is streamed to CPU as it finishes: one fp32 copy of the tower on the device at most.
                forget_fisher = diagonal_fisher(vlm.model, batches(forget), loss, params, out_device="cpu")
                preserve_fisher = diagonal_fisher(vlm.model, batches(preserve[tower]), loss, params, out_device="cpu")
                for name in list(forget_fisher):
                    self.mask.update(saliency_mask({name: forget_fisher.pop(name)}, {name: preserve_fisher.pop(name)},
                                                   gamma))
        if cfg.extra.get("save_mask"):
            save_mask(cfg.extra["save_mask"], self.mask)
        selected = sum(int(m.sum()) for m in self.mask.values())
        total = sum(m.numel() for m in self.mask.values())
        self.stats = {"mask": mask_kind, "gamma": gamma, "masked_in": selected, "mask_size": total,
                      "masked_in_fraction": selected / max(1, total)}
        self.mask = {n: m.to(self.params[n].device) for n, m in self.mask.items()}
        if cfg.lora is not None:
            self._add_adapters(vlm, cfg)

    # --- LoRA: masked low-rank adapters --------------------------------------------------
    def _add_adapters(self, vlm: VLM, cfg: MethodConfig) -> None:
        import re

        from torch.nn.utils import parametrize

        from ..training.loop import LoraOptions

        lora = cfg.lora
        assert lora is not None
        pattern = None if lora.target_modules == LoraOptions().target_modules else lora.target_modules
        targets = [n for n in self.params if pattern is None or re.fullmatch(pattern, n.rsplit(".", 1)[0])]
        if not targets:
            raise ValueError(f"mmunlearner: LoRA target pattern {pattern!r} matches no linear layer of the masked "
                             f"tower(s) ({len(self.params)} layers, e.g. {next(iter(self.params), '?')[:-7]})")
        generator = torch.Generator().manual_seed(cfg.seed)
        self.adapted = {}
        for name in targets:
            module = vlm.model.get_submodule(name.rsplit(".", 1)[0])
            parametrize.register_parametrization(module, "weight", MaskedLowRankDelta(
                self.mask[name], lora.r, lora.alpha, generator))
            self.adapted[name] = module

    def _remove_adapters(self, keep: bool) -> None:
        from torch.nn.utils import parametrize

        for module in getattr(self, "adapted", {}).values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep)
        self.adapted = {}

    def changeable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        mask_kind, _ = self.options(cfg)  # the chosen towers' linear weights, with or without adapters
        towers = ["language", "vision"] if mask_kind == "both" else [mask_kind]
        names = {n for tower in towers for n in self.tower_parameters(vlm, tower)}
        return lambda name, param: name in names

    def loop_lora(self, cfg: MethodConfig) -> Any:
        return None  # our masked adapters replace peft's (see the module docstring)

    def finalize(self, vlm: VLM) -> None:
        # Fold the trained adapters into the weights, in fp32: folding into a bf16 weight would round
        # their small updates away. The edit keeps the fp32 values; the model gets its dtype back.
        for module in getattr(self, "adapted", {}).values():
            original = module.parametrizations.weight.original
            if original.dtype != torch.float32:
                original.data = original.data.float()
        self._remove_adapters(keep=True)

    def trainable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        if cfg.lora is not None:
            return lambda name, param: ".parametrizations.weight.0." in name
        return lambda name, param: name in self.params

    def bind(self, model: torch.nn.Module) -> None:
        """The trained model's tower weights and the mask cut to them (local slices when sharded)."""
        from ..training.sharding import local_part

        if getattr(self, "adapted", None):
            return  # LoRA: the masks live in the adapters
        params = dict(model.named_parameters())
        self.bound = {name: (params[name], local_part(self.mask[name], params[name])) for name in self.params}

    def grad_hook(self, phase: str) -> None:
        from ..training.sharding import local_tensor

        if getattr(self, "adapted", None):
            return  # the forget adapter is masked in its forward already
        if phase != "forget":
            return
        for param, mask in self.bound.values():
            if param.grad is not None:
                local_tensor(param.grad).mul_(mask)

    def phase_loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig, phase: str) -> torch.Tensor:
        for module in getattr(self, "adapted", {}).values():
            module.parametrizations.weight[0].training_phase = phase
        if phase == "forget":
            return -sequence_nll(model, batch["forget"]).mean()
        return cfg.retain_weight * sequence_nll(model, batch["retain"]).mean()

    def edit_meta(self) -> dict[str, Any]:
        return {"mmunlearner": self.stats}

    def cleanup(self) -> None:
        self._remove_adapters(keep=False)  # only left here if training failed
        self.mask, self.params, self.all_forget, self.bound = {}, {}, (), {}


def save_mask(path: str | Path, mask: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save as to_bytes

    from ..utils import atomic_write_bytes

    atomic_write_bytes(Path(path), to_bytes({n: m.to("cpu", torch.uint8).contiguous() for n, m in mask.items()}))


def load_mask(path: str | Path, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mmunlearner: mask file {path} does not exist")
    stored = load_file(str(path))
    missing = sorted(set(params) - set(stored))
    extra = sorted(set(stored) - set(params))
    if missing or extra:
        raise ValueError(f"mmunlearner: mask file {path} does not fit this model "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}): was it made for another model or mask kind?")
    for name, param in params.items():
        if tuple(stored[name].shape) != tuple(param.shape):
            raise ValueError(f"mmunlearner: mask file {path}: {name} has shape {tuple(stored[name].shape)}, "
                             f"the model's is {tuple(param.shape)}")
    return {n: t.bool() for n, t in stored.items()}
