"""Items -> model inputs. Prompts go through the processor's chat template; labels cover
answer tokens only (prompt, image and padding positions are -100)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .items import Item
from .mllmu import mcq_prompt

IGNORE = -100


def user_text(item: Item) -> str:
    return mcq_prompt(item.question, item.options) if item.options else item.question


def messages_for(item: Item, demos: Sequence[Item] = ()) -> list[dict[str, Any]]:
    """Chat messages: optional few-shot demonstrations (question + correct answer), then the question."""
    messages: list[dict[str, Any]] = []
    for demo in list(demos) + [item]:
        content: list[dict[str, Any]] = [{"type": "image"}] if demo.image is not None else []
        content.append({"type": "text", "text": user_text(demo)})
        messages.append({"role": "user", "content": content})
        if demo is not item:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": demo.answer}]})
    return messages


class Encoder:
    """Turns items into padded batches for one model's processor (with a prompt cache)."""

    def __init__(self, vlm: Any, cache_size: int = 50_000):
        self.vlm = vlm
        self.processor = vlm.processor
        self.tokenizer = vlm.processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._cache_size = cache_size

    def prompt(self, item: Item, demos: Sequence[Item] = ()) -> dict[str, torch.Tensor]:
        images = [d.image for d in list(demos) + [item] if d.image is not None]
        key = (user_text(item), tuple(user_text(d) + d.answer for d in demos), tuple(id(i) for i in images))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        text = self.processor.apply_chat_template(messages_for(item, demos), add_generation_prompt=True, tokenize=False)
        encoded = self.processor(text=[text], images=images or None, return_tensors="pt")
        out = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        if len(self._cache) < self._cache_size:
            self._cache[key] = out
        return out

    def answer_ids(self, answer: str) -> list[int]:
        adapter = self.vlm.adapter
        text = adapter.answer_prefix + answer + adapter.answer_suffix(self.tokenizer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def training_example(self, item: Item) -> dict[str, torch.Tensor]:
        prompt = self.prompt(item)
        answer = torch.tensor(self.answer_ids(item.answer), dtype=torch.long)
        example = dict(prompt)
        example["input_ids"] = torch.cat([prompt["input_ids"][0], answer])[None]
        example["attention_mask"] = torch.ones_like(example["input_ids"])
        example["labels"] = torch.cat([torch.full_like(prompt["input_ids"][0], IGNORE), answer])[None]
        for name, value in prompt.items():  # sequence-aligned extras (e.g. Qwen's mm_token_type_ids)
            if name not in ("input_ids", "attention_mask") and _is_sequence_aligned(value, prompt["input_ids"]):
                example[name] = torch.cat([value[0], torch.zeros_like(answer)])[None]
        return example

    def batch(self, items: Sequence[Item], train: bool, demos: Sequence[Item] = ()) -> dict[str, torch.Tensor]:
        examples = [self.training_example(i) if train else self.prompt(i, demos) for i in items]
        return collate(examples, self.pad_id)


def _is_sequence_aligned(value: torch.Tensor, input_ids: torch.Tensor) -> bool:
    return value.dim() == 2 and value.shape == input_ids.shape


def collate(examples: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad sequence tensors; concatenate per-image tensors (pixel values, grids)."""
    length = max(e["input_ids"].shape[1] for e in examples)
    batch: dict[str, list[torch.Tensor]] = {}
    for example in examples:
        ids = example["input_ids"]
        pad = length - ids.shape[1]
        for name, value in example.items():
            if _is_sequence_aligned(value, ids):
                fill = pad_id if name == "input_ids" else (IGNORE if name == "labels" else 0)
                value = torch.cat([torch.full((1, pad), fill, dtype=value.dtype), value], dim=1)
            batch.setdefault(name, []).append(value)
    return {name: torch.cat(values, dim=0) for name, values in batch.items()}
