"""Quantization recovery (Zhang et al., "Does your LLM truly unlearn? An embarrassingly simple
approach", ICLR 2025): unlearning that moves weights less than a quantization step is undone
by rounding them to the grid, and the forgotten answers return.

Round-to-nearest (RTN) weight quantization in plain torch, on CPU or GPU: every ``nn.Linear`` of
the language model's decoder (optionally also the vision tower and projector; the output head
and embeddings stay in full precision, as GPTQ/AWQ/bitsandbytes leave them), each output row
cut into groups of ``group_size`` input weights (a row shorter than that is one group), each
group quantized to ``bits`` and back ("fake quantization": the values a quantized checkpoint
computes with, stored in the model's dtype). Two schemes:

- ``asymmetric`` (default; min-max with a zero point, as GPTQ's and AWQ's round-to-nearest
  baselines): with min = min(group, 0) and max = max(group, 0) (the range holds zero, as in
  GPTQ's quantizer, so nothing is clipped), scale = (max − min) / (2^bits − 1), zero point
  = round(−min / scale), q = clamp(round(w / scale) + zero, 0, 2^bits − 1), ŵ = (q − zero) · scale;
- ``symmetric``: scale = max|w| / (2^(bits−1) − 1), q = clamp(round(w / scale), −2^(bits−1),
  2^(bits−1) − 1), ŵ = q · scale.

The edit goes on first and is quantized with the weights: a bakeable edit (weights, neuron mask,
LoRA, composites of those) is baked into them, as a released unlearned checkpoint would be; a
steering edit stays as hooks in full precision (it is part of the deployed model's code path, not
of its weights). Every weight written is kept on CPU first and copied back: the model is exactly
as before afterwards, also when the attack fails.

Figures, per bit width: forget accuracy of the quantized unlearned model, of the quantized
vanilla model, and the share of the forgotten accuracy that returns,
clip((acc_q_unlearned − acc_unlearned) / (acc_vanilla − acc_unlearned), 0, 1), with the
full-precision accuracies as reference (None where nothing was forgotten).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn

from ...data.items import Benchmark
from ...models.base import VLM
from .base import (
    MCQ_CHANCE,
    Attack,
    AttackConfig,
    AttackResult,
    accuracy_table,
    attack_evaluator,
    edited,
    probe_sets,
    progress_bar,
    register_attack,
    score_mcq,
    stages,
)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = 128, scheme: str = "asymmetric") -> torch.Tensor:
    """``weight`` (out × in) rounded to ``bits`` per group of ``group_size`` input weights of each
    row (a row shorter than ``group_size`` is one group; a last group may be shorter), back in
    the weight's dtype. Computed in float32."""
    if weight.dim() != 2:
        raise ValueError(f"RTN quantizes 2-D weights, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    w = weight.detach().float()
    size = min(group_size, cols)
    pad = (-cols) % size
    if pad:  # a shorter last group: padded with its own first value, which changes neither its min nor max
        w = torch.cat([w, w[:, cols - cols % size:][:, :1].expand(rows, pad)], dim=1)
    groups = w.reshape(rows, -1, size)
    if scheme == "asymmetric":
        top = 2 ** bits - 1
        # As GPTQ's quantizer, the range always holds zero: an all-positive group is not clipped.
        low = groups.amin(dim=-1, keepdim=True).clamp(max=0)
        high = groups.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = ((high - low) / top).clamp(min=1e-8)
        zero = torch.round(-low / scale).clamp(0, top)
        quantized = (torch.clamp(torch.round(groups / scale) + zero, 0, top) - zero) * scale
    elif scheme == "symmetric":
        top = 2 ** (bits - 1) - 1
        scale = (groups.abs().amax(dim=-1, keepdim=True) / top).clamp(min=1e-8)
        quantized = torch.clamp(torch.round(groups / scale), -top - 1, top) * scale
    else:
        raise ValueError(f"quantization scheme must be asymmetric or symmetric, got {scheme!r}")
    return quantized.reshape(rows, -1)[:, :cols].to(weight.dtype)


def quantized_linears(vlm: VLM, towers: bool) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules quantized: the language model's (plus, with ``towers``, the vision
    tower's and projector's), by path; never the output head."""
    adapter, model = vlm.adapter, vlm.model
    roots = [adapter.language_model(model)]
    if towers:
        roots += [adapter.vision_tower(model), adapter.projector(model)]
    found: dict[int, tuple[str, nn.Linear]] = {}
    names = {id(m): n for n, m in model.named_modules()}
    for root in roots:
        for module in root.modules():
            if isinstance(module, nn.Linear):
                found[id(module)] = (names[id(module)], module)
    return dict(found.values())


def bitsandbytes_available() -> str | None:
    """None when bitsandbytes' NF4/int8 can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device (bitsandbytes quantizes on the GPU)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    return None


def bnb_quantize(weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' NF4 round trip of ``weight`` (blocks of 64, on the GPU), back in its dtype and device.
    (bitsandbytes' int8 is row-wise absmax: ``rtn_quantize(w, 8, w.shape[1], "symmetric")`` in plain torch.)"""
    import bitsandbytes.functional as F

    w = weight.detach().to("cuda")
    packed, state = F.quantize_4bit(w.to(torch.float16) if w.dtype == torch.float32 else w, quant_type="nf4")
    return F.dequantize_4bit(packed, state).to(weight.dtype).to(weight.device)


@contextmanager
def quantized(vlm: VLM, edit: Any, quantize: Any, towers: bool) -> Iterator[None]:
    """The model with ``edit`` on (baked if it can be, else hooked: ``relearn.attacked_model``) and
    the chosen linear weights replaced by ``quantize(weight)``; everything written is restored
    exactly afterwards."""
    from ..relearn import attacked_model

    modules = quantized_linears(vlm, towers)
    with attacked_model(vlm, edit, full_finetune=False):
        # After the bake: the quantized weights come back to the edited values here, and the
        # baked ones to the originals when attacked_model ends.
        snapshot = [(m.weight, m.weight.detach().to("cpu", copy=True)) for m in modules.values()]
        try:
            with torch.no_grad():
                for module in modules.values():
                    module.weight.copy_(quantize(module.weight))
            with edit.for_task("mcq") if edit is not None else nullcontext():
                yield
        finally:
            with torch.no_grad():
                for param, value in snapshot:
                    param.copy_(value)


def recovered_share(quantized_acc: float | None, unlearned: float | None, vanilla: float | None) -> float | None:
    """clip((acc_q − acc_unlearned) / (acc_vanilla − acc_unlearned), 0, 1); None if nothing was forgotten."""
    if None in (quantized_acc, unlearned, vanilla) or vanilla - unlearned <= 1e-9:
        return None
    return min(1.0, max(0.0, (quantized_acc - unlearned) / (vanilla - unlearned)))


@register_attack
class Quantization(Attack):
    name = "quantization"
    description = "round-to-nearest weight quantization of the language model (8 and 4 bits)"

    def variants(self, cfg: AttackConfig) -> list[tuple[str, Any]]:
        out = [(f"quant_{bits}bit", lambda w, b=bits: rtn_quantize(w, b, cfg.quant_group_size, cfg.quant_scheme))
               for bits in cfg.quant_bits]
        if cfg.quant_bitsandbytes and bitsandbytes_available() is None:
            out.append(("quant_bnb_nf4", bnb_quantize))
        return out

    def run(self, vlm: VLM, benchmark: Benchmark, edit: Any, cfg: AttackConfig) -> AttackResult:
        sets = probe_sets(benchmark, cfg)
        evaluator = attack_evaluator(vlm, cfg)
        variants = self.variants(cfg)
        plan = stages(edit)
        bar = progress_bar(len(plan) * (1 + len(variants)), self.name, cfg)
        records, reference = [], []
        for stage, stage_edit in plan:
            with edited(vlm, stage_edit):  # full precision: the reference of the recovered share
                reference += score_mcq(evaluator, sets, "plain", stage)
            bar.update(1)
            for probe, quantize in variants:
                with quantized(vlm, stage_edit, quantize, cfg.quant_towers):
                    records += score_mcq(evaluator, sets, probe, stage)
                bar.update(1)
        bar.close()
        table = accuracy_table(records)
        plain = accuracy_table(reference)["plain"]
        figures: dict[str, Any] = {
            "scheme": cfg.quant_scheme, "group_size": cfg.quant_group_size, "towers": cfg.quant_towers,
            "quantized_modules": len(quantized_linears(vlm, cfg.quant_towers)),
            "chance": MCQ_CHANCE, "full_precision": plain, "variants": {}}
        if cfg.quant_bitsandbytes and bitsandbytes_available() is not None:
            figures["bitsandbytes_skipped"] = bitsandbytes_available()
        for probe, _ in variants:
            cell = table[probe]
            forget = {stage: cell.get(stage, {}).get("forget", {}) for stage in ("unlearned", "vanilla")}
            figures["variants"][probe] = {
                "forget_unlearned": forget["unlearned"], "forget_vanilla": forget["vanilla"],
                "retain_unlearned": cell.get("unlearned", {}).get("retain", {}),
                "recovered_share": {m: recovered_share(forget["unlearned"].get(m),
                                                       plain.get("unlearned", {}).get("forget", {}).get(m),
                                                       plain.get("vanilla", {}).get("forget", {}).get(m))
                                    for m in ("vqa", "qa", "all")}}
        return AttackResult(records, figures)
