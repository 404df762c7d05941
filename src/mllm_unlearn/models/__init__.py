"""Model families: one adapter file each; ``load_vlm`` is the one loading path."""
from .base import VLM, ModelAdapter, NeuronSite, TinySize, adapter_for_checkpoint, adapter_for_family, load_vlm
from .tiny import build_tiny_vlm, build_word_tokenizer

__all__ = [
    "VLM", "ModelAdapter", "NeuronSite", "TinySize", "adapter_for_checkpoint", "adapter_for_family",
    "load_vlm", "build_tiny_vlm", "build_word_tokenizer",
]
