"""Tiny models of the real architectures, with a locally built tokenizer and a real image processor."""
from __future__ import annotations

import re
from typing import Iterable

import torch

from .base import VLM, TinySize, adapter_for_family, registered_special_tokens

BASE_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
# Characters the chat templates and prompts use besides words.
PUNCTUATION = list(".,:;?!'\"()[]-_*/")
LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def words_of(texts: Iterable[str]) -> set[str]:
    """The word-level vocabulary of some texts, split as the tokenizer splits them."""
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"\w+|[^\w\s]", text))
    return found


def build_word_tokenizer(words: Iterable[str], family: str):
    """A word-level fast tokenizer (``tokenizers`` library) that knows the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    adapter = adapter_for_family(family)
    chat_words = words_of(["USER ASSISTANT user assistant system"])
    # Every family's specials are known so one vocabulary serves every family (same ids).
    specials = BASE_SPECIAL + registered_special_tokens()
    regular = sorted((set(words) | chat_words | set(PUNCTUATION) | set(LETTERS) | set("0123456789")) - set(specials))
    vocab = {token: index for index, token in enumerate(specials + regular)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=[t for t in specials if t not in BASE_SPECIAL],
    )
    tokenizer.padding_side = "left"
    assert adapter.image_placeholder in tokenizer.get_vocab()
    return tokenizer


def build_tiny_vlm(family: str, words: Iterable[str], size: TinySize | None = None, seed: int = 0,
                   device: str = "cpu") -> VLM:
    """A randomly initialised tiny model of ``family`` whose tokenizer knows ``words``."""
    from ..utils import resolve_device

    size = size or TinySize()
    adapter = adapter_for_family(family)
    tokenizer = build_word_tokenizer(words, family)
    torch.manual_seed(seed)
    model = adapter.tiny_model(tokenizer, size)
    processor = adapter.tiny_processor(tokenizer, size)
    torch_device = resolve_device(device)
    model.to(torch_device)
    return VLM(model, processor, adapter, torch_device, torch.float32)
