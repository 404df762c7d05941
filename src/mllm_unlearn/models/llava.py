"""LLaVA (``LlavaForConditionalGeneration``): CLIP vision tower, MLP projector, Llama LM."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import ModelAdapter, TinySize, register_adapter

# LLaVA-1.5's conversation format, written as a chat template so tiny and real
# checkpoints are prompted through the same ``apply_chat_template`` call.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class LlavaAdapter(ModelAdapter):
    family = "llava"
    model_types = ("llava",)
    image_placeholder = "<image>"
    benchmark_prompts = ("mllmu",)  # MLLMU-Bench's eval.py prompts LLaVA itself (data/mllmu_protocol.py)
    lm_layer_paths = ("model.language_model.layers", "language_model.model.layers")
    vision_block_paths = ("model.vision_tower.encoder.layers", "vision_tower.vision_model.encoder.layers")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    vision_down_proj_name = "fc2"
    answer_prefix = " "

    def special_tokens(self) -> list[str]:
        return ["<image>"]

    def answer_suffix(self, tokenizer: Any) -> str:
        return tokenizer.eos_token

    def tiny_model(self, tokenizer: Any, size: TinySize) -> nn.Module:
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

        patch = size.image_size // size.image_grid  # an image_grid x image_grid grid of patches
        vision = CLIPVisionConfig(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_ffn,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_heads,
            image_size=size.image_size,
            patch_size=patch,
            projection_dim=size.vision_hidden,
        )
        text = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=size.hidden,
            intermediate_size=size.ffn,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=size.max_positions,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=(size.image_size // patch) ** 2,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlavaForConditionalGeneration(config)

    def tiny_processor(self, tokenizer: Any, size: TinySize) -> Any:
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size.image_size},
            crop_size={"height": size.image_size, "width": size.image_size},
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=size.image_size // size.image_grid,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
            chat_template=LLAVA_CHAT_TEMPLATE,
        )


register_adapter(LlavaAdapter())
