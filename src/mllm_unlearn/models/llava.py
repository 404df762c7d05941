"""LLaVA (``LlavaForConditionalGeneration``): CLIP vision tower, MLP projector, Llama LM."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import ModelAdapter, TinySize, module_path, register_adapter

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
    visual_token_config_keys = ("image_token_id", "image_token_index")  # transformers 5 / the older name
    # transformers >= 4.52 first, then the older layout (language_model = LlamaForCausalLM, and
    # vision_tower = CLIPVisionModel wrapping vision_model).
    lm_layer_paths = ("model.language_model.layers", "language_model.model.layers")
    language_model_paths = ("model.language_model", "language_model.model")
    vision_tower_paths = ("model.vision_tower", "vision_tower")
    vision_block_paths = ("model.vision_tower.encoder.layers", "vision_tower.vision_model.encoder.layers")
    projector_paths = ("model.multi_modal_projector", "multi_modal_projector")
    vision_down_proj_name = "fc2"

    def special_tokens(self) -> list[str]:
        return ["<image>"]

    def read_vision_blocks(self, model: nn.Module) -> int:
        """LLaVA feeds the projector ``hidden_states[vision_feature_layer]`` of the vision tower
        (index 0 = the embeddings, k = block k-1's output; LLaVA-1.5: -2, the second-to-last
        block), so the blocks after that one never reach the language model."""
        blocks = len(self.vision_blocks(model))
        chosen = getattr(model.config, "vision_feature_layer", None)
        if chosen is None:
            raise AttributeError(f"{type(model).__name__}'s config has no vision_feature_layer")
        layers = [chosen] if isinstance(chosen, int) else list(chosen)
        for layer in layers:
            if not -(blocks + 1) <= layer <= blocks:
                raise ValueError(f"vision_feature_layer {chosen} does not fit a vision tower of {blocks} layers")
        return max(layer % (blocks + 1) for layer in layers)

    def unread_vision_modules(self, model: nn.Module) -> list[str]:
        # CLIP's post_layernorm only normalises the pooled class token, which LLaVA does not use.
        tower = self.vision_tower(model)
        base = module_path(model, tower)
        heads = [f"{base}.{name}" for name in ("post_layernorm", "vision_model.post_layernorm")
                 if _has_submodule(tower, name)]
        return super().unread_vision_modules(model) + heads

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


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


register_adapter(LlavaAdapter())
