"""Model families: one adapter file each, registered here; ``load_vlm`` is the one loading path.

A new family is one file defining a ``ModelAdapter`` subclass that calls ``register_adapter``, and
one name in the import below (docs/architecture.md#a-model-family). Families register in import
order; the tiny tokenizer lists their special tokens in that order (``registered_special_tokens``)."""
from . import llava, qwen2_5_vl, qwen2_vl  # noqa: F401  (each registers its adapter)
from .base import ADAPTERS, VLM, ModelAdapter, NeuronSite, TinySize, adapter_for_checkpoint, adapter_for_family, load_vlm, register_adapter
from .tiny import build_tiny_vlm, build_word_tokenizer

__all__ = [
    "ADAPTERS", "VLM", "ModelAdapter", "NeuronSite", "TinySize", "adapter_for_checkpoint", "adapter_for_family",
    "load_vlm", "register_adapter", "build_tiny_vlm", "build_word_tokenizer",
]
