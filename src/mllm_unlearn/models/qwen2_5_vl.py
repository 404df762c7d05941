"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): windowed ViT with gated MLP, Qwen2 LM."""
from __future__ import annotations

from typing import Any

from .base import TinySize, register_adapter
from .qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    vision_down_proj_name = "down_proj"  # the vision MLP is gated here

    def _config_classes(self) -> tuple[Any, Any]:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    def _vision_config(self, size: TinySize) -> dict:
        patch = size.image_size // 8
        return dict(
            depth=size.vision_layers,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_ffn,
            out_hidden_size=size.hidden,
            num_heads=size.vision_heads,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=size.image_size // 2,
            fullatt_block_indexes=[size.vision_layers - 1],
        )

    def _processor_class(self) -> Any:
        from transformers import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor


register_adapter(Qwen2_5_VLAdapter())
