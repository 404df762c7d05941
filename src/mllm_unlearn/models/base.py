"""What every model family must tell the toolkit, and the loaded-model handle.

Family-specific knowledge (config classes, processor construction, module paths) lives
only in the adapter files next to this one; the rest of the toolkit asks an adapter.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model of a real architecture (random init, trained here)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 256
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    vision_ffn: int = 128
    image_size: int = 32
    image_grid: int = 2  # LLaVA: patches per image side (image tokens = image_grid²; each patch still shows the face)
    max_positions: int = 512


@dataclass(frozen=True)
class NeuronSite:
    """A set of FFN neurons: the input coordinates of one down-projection module."""

    name: str  # e.g. "lm.3" or "vision.1"
    module_path: str  # dotted path inside the model
    width: int  # number of neurons (in_features of the down projection)


class ModelAdapter:
    """Base class; one subclass per model family, registered in ``ADAPTERS``."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # values of ``config.model_type`` this adapter handles
    image_placeholder: ClassVar[str]  # the token a tiny tokenizer must know as special
    # Benchmarks whose own evaluation code writes this family's prompts (e.g. "mllmu": MLLMU-Bench's
    # eval.py writes LLaVA-1.5's); under that benchmark's protocol they replace the chat template.
    benchmark_prompts: ClassVar[tuple[str, ...]] = ()

    # --- tiny models -----------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        raise NotImplementedError

    def tiny_model(self, tokenizer: Any, size: TinySize) -> nn.Module:
        raise NotImplementedError

    def tiny_processor(self, tokenizer: Any, size: TinySize) -> Any:
        raise NotImplementedError

    # --- loading ---------------------------------------------------------------------
    def load_processor(self, path: str | Path) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(path))

    def save_processor(self, processor: Any, path: str | Path) -> None:
        processor.save_pretrained(str(path))

    # --- where things live -----------------------------------------------------------
    def lm_layers(self, model: nn.Module) -> nn.ModuleList:
        return _find_module(model, self.lm_layer_paths)

    def vision_blocks(self, model: nn.Module) -> nn.ModuleList:
        return _find_module(model, self.vision_block_paths)

    def projector(self, model: nn.Module) -> nn.Module:
        return _find_module(model, self.projector_paths)

    lm_layer_paths: ClassVar[tuple[str, ...]]
    vision_block_paths: ClassVar[tuple[str, ...]]
    projector_paths: ClassVar[tuple[str, ...]]
    vision_down_proj_name: ClassVar[str]  # leaf name of the vision FFN's down projection

    def lm_ffn_sites(self, model: nn.Module) -> list[NeuronSite]:
        return self._sites(model, self.lm_layers(model), "lm", "mlp.down_proj")

    def vision_ffn_sites(self, model: nn.Module) -> list[NeuronSite]:
        return self._sites(model, self.vision_blocks(model), "vision", f"mlp.{self.vision_down_proj_name}")

    def repeat_examples(self, batch: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
        """Each example of a collated batch repeated ``times`` times in a row (example-major).

        Default: every tensor has the examples along dimension 0 (LLaVA's images included).
        """
        return {name: value.repeat_interleave(times, dim=0) for name, value in batch.items()}

    def vision_rows_per_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Rows of each image in the vision FFN input when the tower flattens images into one
        (tokens, width) sequence; ``None`` when its input is (images, tokens, width)."""
        return None

    def vision_module_prefix(self, model: nn.Module) -> str:
        """Dotted prefix of the whole vision tower, for freezing or masking by tower."""
        return _module_path(model, self.vision_blocks(model)).rsplit(".", 2)[0]

    def _sites(self, model: nn.Module, blocks: nn.ModuleList, kind: str, leaf: str) -> list[NeuronSite]:
        base = _module_path(model, blocks)
        sites = []
        for index, block in enumerate(blocks):
            down = block.get_submodule(leaf)
            sites.append(NeuronSite(f"{kind}.{index}", f"{base}.{index}.{leaf}", down.in_features))
        return sites


ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    ADAPTERS[adapter.family] = adapter
    return adapter


def adapter_for_family(family: str) -> ModelAdapter:
    _import_families()
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family]


def adapter_for_checkpoint(path: str | Path) -> ModelAdapter:
    """Pick the adapter from ``config.json``'s ``model_type``."""
    _import_families()
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a model checkpoint: {config_file} is missing")
    model_type = json.loads(config_file.read_text()).get("model_type")
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for a in ADAPTERS.values() for t in a.model_types)
    raise ValueError(f"{config_file}: model_type {model_type!r} is not supported; supported: {supported}")


def _import_families() -> None:
    from . import llava, qwen2_5_vl, qwen2_vl  # noqa: F401  (registration side effect)


def _find_module(model: nn.Module, candidates: tuple[str, ...]) -> nn.Module:
    # Several paths because transformers moved modules (4.52 refactor) and peft adds prefixes.
    for root in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        if root is None:
            continue
        for path in candidates:
            try:
                return root.get_submodule(path)
            except AttributeError:
                continue
    raise AttributeError(f"none of {candidates} found in {type(model).__name__}")


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise AttributeError("module not found in model")


@dataclass
class VLM:
    """A loaded vision-language model with everything needed to use it."""

    model: nn.Module
    processor: Any
    adapter: ModelAdapter
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def save(self, path: str | Path, extra_files: dict[str, str] | None = None) -> None:
        """``save_pretrained`` of model and processor (plus ``extra_files``: name -> text), all
        appearing at ``path`` together or not at all."""
        from ..utils import atomic_directory

        with atomic_directory(path) as tmp:
            self.model.save_pretrained(str(tmp))
            self.adapter.save_processor(self.processor, tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)


def load_vlm(path: str | Path, device: str = "auto", dtype: str = "float32") -> VLM:
    """Load any local checkpoint of a supported family: the one loading path for tiny and real models."""
    from transformers import AutoModelForImageTextToText

    from ..utils import resolve_device, resolve_dtype

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)  # option errors before file errors
    adapter = adapter_for_checkpoint(path)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch_dtype)
    model.to(torch_device).eval()
    processor = adapter.load_processor(path)
    processor.tokenizer.padding_side = "left"
    return VLM(model, processor, adapter, torch_device, torch_dtype)
