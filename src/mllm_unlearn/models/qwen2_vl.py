"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): ViT with 2x2 patch merger, Qwen2 LM with M-RoPE."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelAdapter, TinySize, register_adapter

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _torchvision_available() -> bool:
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception:  # a torchvision built for another torch raises RuntimeError on import
        return False
    return True


class Qwen2VLAdapter(ModelAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl",)
    image_placeholder = "<|image_pad|>"
    visual_token_config_keys = ("image_token_id", "video_token_id")
    # transformers >= 4.52 first (model = {visual, language_model}), then the older layout
    # (visual beside model = the language model). The vision tower holds the merger (projector).
    lm_layer_paths = ("model.language_model.layers", "model.layers")
    language_model_paths = ("model.language_model", "model")
    vision_tower_paths = ("model.visual", "visual")
    vision_block_paths = ("model.visual.blocks", "visual.blocks")
    projector_paths = ("model.visual.merger", "visual.merger")
    vision_down_proj_name = "fc2"

    def repeat_examples(self, batch: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
        # pixel_values are the images' patch rows concatenated: repeat each image's block of rows.
        out = {name: value.repeat_interleave(times, dim=0) for name, value in batch.items() if name != "pixel_values"}
        if "pixel_values" in batch:
            rows = batch["image_grid_thw"].prod(dim=-1).tolist()
            blocks = batch["pixel_values"].split(rows, dim=0)
            out["pixel_values"] = torch.cat([block for block in blocks for _ in range(times)], dim=0)
        return out

    def vision_rows_per_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["image_grid_thw"].prod(dim=-1)  # the blocks keep each image's rows contiguous

    def continuation_positions(self, model: nn.Module, prefix_length: int, suffix_length: int,
                               batch: int) -> torch.Tensor | None:
        # M-RoPE: text after the image continues from the largest position so far, which the
        # prefix's forward recorded as ``rope_deltas`` (position - index); the three axes agree.
        deltas = model.model.rope_deltas
        if deltas is None or deltas.shape[0] != 1:
            raise ValueError("continuation_positions: the last forward was not a one-row prefix with an image")
        positions = torch.arange(prefix_length, prefix_length + suffix_length, device=deltas.device) + deltas[0, 0]
        return positions.view(1, 1, -1).expand(3, batch, -1)

    def special_tokens(self) -> list[str]:
        return list(QWEN_SPECIAL_TOKENS)

    def answer_suffix(self, tokenizer: Any) -> str:
        return "<|im_end|>"

    def _config_classes(self) -> tuple[Any, Any]:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        return Qwen2VLConfig, Qwen2VLForConditionalGeneration

    def _vision_config(self, size: TinySize) -> dict:
        return dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.hidden,  # output width of the merger = LM width
            mlp_ratio=size.vision_ffn // size.vision_hidden,
            num_heads=size.vision_heads,
            patch_size=size.image_size // 8,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )

    def tiny_model(self, tokenizer: Any, size: TinySize) -> nn.Module:
        config_cls, model_cls = self._config_classes()
        head_dim = size.hidden // size.heads
        # M-RoPE splits the rotary half-dimension into (time, height, width) sections.
        half = head_dim // 2
        section = [half - 2 * (half // 3), half // 3, half // 3]
        text = dict(
            vocab_size=len(tokenizer),
            hidden_size=size.hidden,
            intermediate_size=size.ffn,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=size.max_positions,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
        ids = tokenizer.convert_tokens_to_ids
        config = config_cls(
            text_config=text,
            vision_config=self._vision_config(size),
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
        return model_cls(config)

    def _processor_class(self) -> Any:
        from transformers import Qwen2VLProcessor

        return Qwen2VLProcessor

    def tiny_processor(self, tokenizer: Any, size: TinySize) -> Any:
        from transformers import Qwen2VLImageProcessorPil

        pixels = size.image_size * size.image_size
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=size.image_size // 8, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels
        )
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
        return self._image_only_processor(image_processor, tokenizer, QWEN_CHAT_TEMPLATE)

    def _image_only_processor(self, image_processor: Any, tokenizer: Any, chat_template: str | None) -> Any:
        """The real processor class with its video half left out.

        transformers 5 requires a torchvision-backed video processor to build a Qwen
        processor; the CPU torch pin has no matching torchvision, and images never need it.
        """
        base = self._processor_class()
        if _torchvision_available():
            from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

            return base(image_processor=image_processor, tokenizer=tokenizer,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=chat_template)

        class ImageOnlyProcessor(base):
            def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
                if argument_name == "video_processor" and argument is None:
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        ImageOnlyProcessor.__name__ = base.__name__
        return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=None, chat_template=chat_template)

    def load_processor(self, path: str | Path) -> Any:
        if _torchvision_available():
            return super().load_processor(path)
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = AutoImageProcessor.from_pretrained(str(path), backend="pil")
        template = tokenizer.chat_template
        template_file = Path(path) / "chat_template.jinja"
        if template_file.is_file():
            template = template_file.read_text()
        elif (Path(path) / "chat_template.json").is_file():
            template = json.loads((Path(path) / "chat_template.json").read_text())["chat_template"]
        return self._image_only_processor(image_processor, tokenizer, template)

    def check_max_pixels(self, max_pixels: int) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"--max-pixels must be a positive number of pixels, got {max_pixels!r}")

    def limit_image_pixels(self, processor: Any, max_pixels: int) -> None:
        """The image processor's ``max_pixels`` (``size["longest_edge"]`` in transformers 5): images
        above it are scaled down, so they give fewer image tokens."""
        self.check_max_pixels(max_pixels)
        image_processor = processor.image_processor
        size = image_processor.size
        least = max(size["shortest_edge"] or 0, (image_processor.patch_size * image_processor.merge_size) ** 2)
        if max_pixels < least:
            raise ValueError(f"--max-pixels {max_pixels} is below this checkpoint's smallest image ({least} pixels: its "
                             "min_pixels, and at least one merged patch)")
        image_processor.size = (dataclasses.replace(size, longest_edge=max_pixels) if dataclasses.is_dataclass(size)
                                else {**size, "longest_edge": max_pixels})

    def image_max_pixels(self, processor: Any) -> int | None:
        size = processor.image_processor.size
        return int(size["longest_edge"])

    def save_processor(self, processor: Any, path: str | Path) -> None:
        if getattr(processor, "video_processor", None) is not None:
            processor.save_pretrained(str(path))
            return
        processor.tokenizer.save_pretrained(str(path))
        processor.image_processor.save_pretrained(str(path))
        if processor.chat_template:
            (Path(path) / "chat_template.jinja").write_text(processor.chat_template)


register_adapter(Qwen2VLAdapter())
