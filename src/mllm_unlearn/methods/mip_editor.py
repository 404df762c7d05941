"""MIP-Editor (arXiv 2511.06793): forget along modality-specific influential neuron paths.

1. Path search (``localization/paths.py``) on the forget samples: IGI over language-model FFN
   neurons with the text-only (QA) samples (where the data has none, the image pairs with the person
   named, ``data.text_forms``), IFI over vision-tower FFN neurons with the image +
   question (VQA) samples; greedy per layer, top ``top_k`` per layer and sample, union over samples
   (``max_per_layer`` optionally keeps only the highest-scoring neurons of each union).
2. Prune the path neurons: their output is scaled by ``prune_scale`` (0 = removed) at every position.
3. RMisU: forget hidden states at LM layer ``layer`` are steered to c·u (u a random unit vector,
   c = ``steering_coeff`` × the vanilla model's mean hidden norm there), retain hidden states are
   kept near the frozen, unpruned model's: loss = (β·MSE_forget + α·MSE_retain) / norm²-per-dim,
   with β = ``forget_weight``, α = ``alpha`` (the paper's code: 0.5 and 0.5).
   Only the path neurons' weights train, through the shared training loop.

Pruning and training, made consistent. The released code prunes path neurons at sequence position
0 only and trains the gate/up rows of the same neurons, which stay alive at every other position.
Pruned at *every* position (our fix), a neuron's input-side rows get no gradient any more. So the
pruning zeroes (scales) the neurons' write vectors, the down-projection columns (a baked
``NeuronMask``), and RMisU re-learns exactly those columns from there: a pruned neuron comes back
only as far as misdirecting forget inputs while matching the vanilla model on retain inputs needs.
Path neurons in LM layers after ``layer`` get no gradient from a loss taken at ``layer`` (as in the
released code); they stay pruned, as a ``NeuronMask`` (hooks). The edit is
``CompositeEdit([NeuronMask(those neurons), WeightDelta(trained columns)])``, reversible as a whole.

Only path-neuron columns move: their gradients are masked as they are computed (so clipping and
AdamW's state see nothing else), and after every optimizer step all other entries of the trained
matrices are put back bit for bit (so no optimizer variant, weight decay say, can move them). With
``--lora`` the adapters sit on the trained down projections and LoRA's A matrix keeps zeros in every
non-path column, so B·A changes path columns only.

Presets. The paper's (7B-class checkpoints, ``PAPER_7B_PRESET``): lr 2e-5, 4 epochs, batch 4,
layer 7, m = 4, k = 5, α = β = 0.5. The released code's own defaults differ (lr 5e-4, 1 epoch,
batch 6) and it steers to an absolute norm of 10, which does not transfer across model sizes, so
c here is relative to the hidden norm. The tiny default model's values are in
``methods/defaults.py`` (tuned on the built-in world, see there).

Retain data: the released RMisU loop upsamples the forget set to the retain loader's length
(one epoch = one pass over the retain batches). Here the forget set defines an epoch and each
forget item gets a retain item of its modality, cycled through seeded shuffles of the whole retain set
(``methods.base.RetainCycler``): every retain item is seen within ceil(|retain| / |forget|) epochs.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..data.text_forms import text_only_items
from ..interventions import CompositeEdit, Edit, NeuronMask
from ..localization.paths import POSITIONS, PathSearchConfig, predicting_positions, search_paths, text_path_task, visual_path_task
from ..models.base import VLM
from ..training.sharding import in_sharded_training
from .base import GradientMethod, MethodConfig, register_method
from .rmu import Misdirection

PATHS = ("both", "text", "visual")

# The paper's settings (7B-class checkpoints); see the module docstring.
PAPER_7B_PRESET: dict[str, Any] = {
    "lr": 2e-5, "epochs": 4, "batch_size": 4,
    "extra": {"paths": "both", "steps": 4, "top_k": 5, "layer": 7, "alpha": 0.5, "forget_weight": 0.5,
              "prune_scale": 0.0},
}

_DEFAULTS: dict[str, Any] = {
    "paths": "both", "steps": 4, "top_k": 5, "positions": "answer", "path_batch_size": 8, "path_samples": None,
    "max_per_layer": None, "layer": None, "steering_coeff": 2.0, "alpha": 0.5, "forget_weight": 0.5,
    "prune_scale": 0.0, "train": True,
}


@register_method
class MIPEditor(GradientMethod):
    name = "mip-editor"
    # Hyperparameters (docs/methods.md#presets; sweeps behind them: docs/preset-history.md#mip-editor).
    tiny_preset = {"lr": 2e-3, "epochs": 4, "batch_size": 16, "extra": {"layer": 2, "steering_coeff": 2.0}}
    # The IGI/IFI path search backpropagates through both towers without checkpointing:
    # benchmarks/scale_memory.py predicts ~12 GiB per LLaVA-7B sample, 4 samples per pass at most on
    # 80 GB. Passes of at most 1024 tokens (one LLaVA sample, three Qwen ones) keep it on one GPU.
    paper_preset = {**PAPER_7B_PRESET, "max_batch_tokens": 1024}
    search_space = {"lr": ("log", 5e-4, 5e-3), "epochs": ("int", 1, 6), "extra.alpha": ("float", 0.2, 0.8)}
    uses_retain = True
    option_names = tuple(_DEFAULTS)

    def __init__(self) -> None:
        self.steer = Misdirection()
        self.paths: dict[str, torch.Tensor] = {}  # down-projection path -> path neurons (all found)
        self.trained: dict[str, torch.Tensor] = {}  # the subset whose columns RMisU trains
        self.columns: dict[str, torch.Tensor] = {}  # weight name -> (out, in) bool mask of trainable entries
        self.originals: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        self.bound: dict[str, tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = {}  # set by bind()
        self.lora = False
        self.stats: dict[str, Any] = {}
        self.vlm: VLM | None = None

    # --- options -----------------------------------------------------------------------
    def options(self, vlm: VLM, cfg: MethodConfig) -> dict[str, Any]:
        o = {**_DEFAULTS, **cfg.extra}
        if o["paths"] not in PATHS:
            raise ValueError(f"mip-editor: paths must be one of {PATHS} (text = IGI only, visual = IFI only), "
                             f"got {o['paths']!r}")
        if o["positions"] not in POSITIONS:
            raise ValueError(f"mip-editor: positions must be one of {POSITIONS}, got {o['positions']!r}")
        layers = len(vlm.adapter.lm_layers(vlm.model))
        o["layer"] = max(1, layers // 4) if o["layer"] is None else int(o["layer"])
        if not 0 <= o["layer"] < layers:
            raise ValueError(f"mip-editor: layer must be in [0, {layers - 1}] for this model, got {o['layer']}")
        if not 0.0 <= float(o["prune_scale"]) <= 1.0:
            raise ValueError(f"mip-editor: prune_scale must be in [0, 1], got {o['prune_scale']}")
        for key in ("steps", "top_k", "path_batch_size"):
            if int(o[key]) < 1:
                raise ValueError(f"mip-editor: {key} must be >= 1, got {o[key]}")
        for key in ("path_samples", "max_per_layer"):
            if o[key] is not None and int(o[key]) < 1:
                raise ValueError(f"mip-editor: {key} must be >= 1 or unset, got {o[key]}")
        return o

    # --- 1. paths ------------------------------------------------------------------------
    def find_paths(self, vlm: VLM, forget: Sequence[Item], o: dict[str, Any],
                   max_batch_tokens: int | None = None) -> dict[str, torch.Tensor]:
        encoder = Encoder(vlm)
        limit = None if o["path_samples"] is None else int(o["path_samples"])
        searches = []
        if o["paths"] in ("both", "text"):
            text = text_only_items(forget, f"{self.name} (paths={o['paths']})", "forget")  # data.text_forms
            searches.append(("ig", text[:limit], vlm.adapter.lm_ffn_sites(vlm.model),
                             text_path_task(vlm, encoder, o["positions"])))
        if o["paths"] in ("both", "visual"):
            searches.append(("fisher", [i for i in forget if i.modality == "vqa"][:limit],
                             vlm.adapter.vision_ffn_sites(vlm.model, required_by=f"mip-editor (paths={o['paths']})"),
                             visual_path_task(vlm, encoder)))
        paths: dict[str, torch.Tensor] = {}
        for score, samples, sites, task in searches:
            if not samples:
                kind = "text-only (QA)" if score == "ig" else "image + question (VQA)"
                raise ValueError(f"mip-editor: paths={o['paths']} needs {kind} forget items, and there are none")
            cfg = PathSearchConfig(steps=int(o["steps"]), top_k=int(o["top_k"]), score=score,
                                   batch_size=int(o["path_batch_size"]), max_batch_tokens=max_batch_tokens)
            result = search_paths(vlm.model, [s.module_path for s in sites], samples, task, cfg)
            paths.update(result.union(None if o["max_per_layer"] is None else int(o["max_per_layer"])))
        return paths

    def unlearn(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig) -> Edit:
        self.check_options(cfg)
        o = self.options(vlm, cfg)
        if not forget:
            raise ValueError("mip-editor: the forget set is empty")
        self.paths = self.find_paths(vlm, forget, o, cfg.max_batch_tokens)
        if not self.paths:
            raise ValueError("mip-editor: the path search found no neuron with a positive score")
        lm_sites = {s.module_path: int(s.name.split(".")[1]) for s in vlm.adapter.lm_ffn_sites(vlm.model)}
        # Path neurons upstream of the steering layer are retrained; those after it only pruned.
        self.trained = {p: i for p, i in self.paths.items() if p not in lm_sites or lm_sites[p] <= o["layer"]} \
            if o["train"] else {}
        pruned_only = {p: i for p, i in self.paths.items() if p not in self.trained}
        self.stats = {"paths": {p: i.tolist() for p, i in self.paths.items()},
                      "path_neurons": sum(i.numel() for i in self.paths.values()),
                      "trained_neurons": sum(i.numel() for i in self.trained.values()), "options": o}
        parts: list[Edit] = []
        if pruned_only and float(o["prune_scale"]) < 1.0:
            parts.append(NeuronMask(pruned_only, {p: torch.full((i.numel(),), float(o["prune_scale"]))
                                                  for p, i in pruned_only.items()}, meta={"method": self.name}))
        if self.trained:
            if cfg.lora is not None:
                from dataclasses import replace

                targets = "|".join(re.escape(p) for p in self.trained)
                cfg = replace(cfg, lora=replace(cfg.lora, target_modules=rf"(.*\.)?({targets})"))
            self.vlm = vlm
            parts.append(super().unlearn(vlm, forget, retain, cfg))
        if not parts:
            raise ValueError("mip-editor: train=false with prune_scale=1 changes nothing")
        edit = parts[0] if len(parts) == 1 else CompositeEdit(parts)
        edit.meta = {**getattr(edit, "meta", {}), "method": self.name, "config": cfg.to_dict(), "mip_editor": self.stats}
        if "steps" not in edit.meta:
            edit.meta["steps"] = 0
        if isinstance(edit, CompositeEdit):
            edit.meta.update({k: parts[-1].meta[k] for k in ("steps", "losses") if k in parts[-1].meta})
        return edit

    # --- 2. prune, 3. RMisU through the shared loop --------------------------------------------
    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        o = self.options(vlm, cfg)
        self.steer.start(vlm, o["layer"], float(o["steering_coeff"]), forget, encoder, cfg.batch_size, cfg.seed)
        scale = float(o["prune_scale"])
        pruning = NeuronMask(self.trained, {p: torch.full((i.numel(),), scale) for p, i in self.trained.items()}) \
            if scale < 1.0 else None
        # Sharded (--shard fsdp): the caller's model is the retain loss's unpruned reference, so the
        # pruning goes into the trained copy only, through the originals ``bind`` writes there.
        sharded = in_sharded_training()
        if pruning is not None and not sharded:  # pruning = the NeuronMask baked into the down-projection columns
            pruning.bake(vlm)
        params = dict(vlm.model.named_parameters())
        self.columns, self.originals = {}, {}
        for path, neurons in self.trained.items():
            weight = params[f"{path}.weight"]
            mask = torch.zeros_like(weight, dtype=torch.bool)
            mask[:, neurons.to(weight.device)] = True
            self.columns[f"{path}.weight"] = mask
            original = weight.detach().clone()
            if pruning is not None and sharded:  # the same product bake() computes
                original.mul_(pruning._factors(path, vlm.model.get_submodule(path))[None, :])
            self.originals[f"{path}.weight"] = original
        self.lora = cfg.lora is not None
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handles.append(register_optimizer_step_post_hook(self._restore))

    def changeable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        names = {f"{p}.weight" for p in self.trained}  # pruned in prepare, trained (or LoRA-adapted) after
        return lambda name, _: name in names

    def trainable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        if cfg.lora is not None:
            return None  # peft's adapters, on the trained down projections only
        names = {f"{p}.weight" for p in self.trained}
        return lambda name, _: name in names

    def bind(self, model: torch.nn.Module) -> None:
        """Column masks and original values cut to the trained model's weights (local slices when
        sharded, ``--shard fsdp``); full fine-tuning only (with LoRA, ``_restore`` edits the adapters)."""
        from ..training.sharding import local_part, local_tensor

        if self.lora:
            return
        params = dict(model.named_parameters())
        self.bound = {name: (params[name], local_part(mask, params[name]), local_part(self.originals[name], params[name]))
                      for name, mask in self.columns.items()}
        with torch.no_grad():  # the pruned start (a no-op where prepare baked it already)
            for param, _, original in self.bound.values():
                local_tensor(param).copy_(original)
        self.originals = {}  # the local slices are all that is needed from here on

    def mask_gradients(self, phase: str) -> None:
        """Only path-neuron columns get gradient, before clipping and AdamW see it."""
        from ..training.sharding import local_tensor

        for param, mask, _ in self.bound.values():
            if param.grad is not None:
                local_tensor(param.grad).mul_(mask)

    @torch.no_grad()
    def _restore(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        """After each step: non-path entries back to their values (LoRA: A's non-path columns to 0)."""
        if self.vlm is None:
            return
        for name, mask in self.columns.items():
            path = name[: -len(".weight")]
            module = self.vlm.model.get_submodule(path)
            if hasattr(module, "lora_A"):  # peft's LoRA layer while training with --lora
                for adapter in module.lora_A.values():
                    adapter.weight.mul_(mask[0].to(adapter.weight.dtype)[None, :])
                continue
            from ..training.sharding import local_tensor

            param, local_mask, original = self.bound[name]
            weight = local_tensor(param)
            weight.copy_(torch.where(local_mask, weight, original))

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        o = {**_DEFAULTS, **cfg.extra}
        forget = batch["forget"]
        mask = predicting_positions(forget, o["positions"])
        return (float(o["forget_weight"]) * self.steer.forget_loss(model, forget, mask)
                + float(o["alpha"]) * self.steer.retain_loss(model, batch["retain"]))

    def edit_meta(self) -> dict[str, Any]:
        return {"mip_editor": self.stats}

    def cleanup(self) -> None:
        self.steer.stop()
        for handle in self.handles:
            handle.remove()
        self.handles, self.columns, self.originals, self.vlm, self.bound = [], {}, {}, None, {}
