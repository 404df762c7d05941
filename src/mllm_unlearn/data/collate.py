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
    """Turns items into padded batches for one model's processor (with a prompt cache).

    ``protocol``: the evaluation protocol the prompts are for. Under a benchmark's protocol
    whose own code writes this family's prompts (``adapter.benchmark_prompts``; MLLMU-Bench
    for LLaVA), prompts are that benchmark's text; otherwise the processor's chat template.
    """

    def __init__(self, vlm: Any, cache_size: int = 50_000, protocol: str = "ours"):
        self.vlm = vlm
        self.protocol = protocol
        self.benchmark_prompt = protocol in vlm.adapter.benchmark_prompts
        self.processor = vlm.processor
        self.tokenizer = vlm.processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        # Prompts are keyed by their images' id(); holding the images keeps an id from being reused
        # by another image while its prompt is cached.
        self._cached_images: list[Any] = []
        self._answer_cache: dict[str, list[int]] = {}
        self._lead: tuple[str, str] | None = None  # (generation prompt, text the template writes before an answer)
        self._cache_size = cache_size

    def _key(self, item: Item, demos: Sequence[Item]) -> tuple:
        images = [d.image for d in list(demos) + [item] if d.image is not None]
        return (user_text(item), tuple(user_text(d) + d.answer for d in demos), tuple(id(i) for i in images))

    def prompt(self, item: Item, demos: Sequence[Item] = ()) -> dict[str, torch.Tensor]:
        return self.prompts([item], demos)[0]

    def prompts(self, items: Sequence[Item], demos: Sequence[Item] = ()) -> list[dict[str, torch.Tensor]]:
        """Each item's encoded prompt (batch of one), the uncached ones through one processor call.

        The processor's per-call overhead (kwargs merging and validation) costs more than the
        tokenisation itself, so encoding a batch at once is about twice as fast; padding is
        stripped again, so each prompt is exactly what a call on that item alone returns."""
        keys = [self._key(item, demos) for item in items]
        missing: dict[tuple, Item] = {}
        for key, item in zip(keys, items):
            if key not in self._cache and key not in missing:
                missing[key] = item
        fresh = dict(zip(missing, self._encode(list(missing.values()), demos))) if missing else {}
        for key, encoded in fresh.items():
            if len(self._cache) < self._cache_size:
                self._cache[key] = encoded
                item = missing[key]
                self._cached_images.extend(d.image for d in list(demos) + [item] if d.image is not None)
        return [fresh[key] if key in fresh else self._cache[key] for key in keys]

    def prompt_text(self, item: Item, demos: Sequence[Item] = ()) -> str:
        """The prompt as text, before the processor expands image placeholders and tokenises it."""
        if self.benchmark_prompt:
            from .mllmu_protocol import PROTOCOL, eval_prompt

            if self.protocol == PROTOCOL:
                return eval_prompt(item, demos, self.vlm.adapter.image_placeholder)
            raise ValueError(f"no prompt text is known for protocol {self.protocol!r}")
        return self.processor.apply_chat_template(messages_for(item, demos), add_generation_prompt=True, tokenize=False)

    def _encode(self, items: Sequence[Item], demos: Sequence[Item]) -> list[dict[str, torch.Tensor]]:
        if len(items) > 1 and self.tokenizer.pad_token is None:
            # The processor cannot pad a batch without a pad token: one call per item, as before.
            return [encoded for item in items for encoded in self._encode([item], demos)]
        texts = [self.prompt_text(item, demos) for item in items]
        per_item_images = [[d.image for d in list(demos) + [item] if d.image is not None] for item in items]
        images = [image for group in per_item_images for image in group]
        encoded = self.processor(text=texts, images=images or None, return_tensors="pt", padding=len(items) > 1)
        encoded = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
        ids = encoded["input_ids"]
        lengths = encoded["attention_mask"].sum(dim=1).tolist() if "attention_mask" in encoded else [ids.shape[1]] * len(items)
        left = self.tokenizer.padding_side == "left"
        image_counts = [len(group) for group in per_item_images]
        rows = self.vlm.adapter.vision_rows_per_image(encoded) if images else None
        rows = rows.tolist() if rows is not None else [1] * len(images)
        out: list[dict[str, torch.Tensor]] = [{} for _ in items]
        for name, value in encoded.items():
            if _is_sequence_aligned(value, ids):
                for k, length in enumerate(lengths):
                    row = value[k, ids.shape[1] - length:] if left else value[k, :length]
                    out[k][name] = row[None].clone()
            elif value.shape[0] in (len(images), sum(rows)) and images:
                # Per-image tensors: one row per image, or (Qwen's patches) each image's block of rows.
                sizes = rows if value.shape[0] == sum(rows) else [1] * len(images)
                blocks = list(value.split(sizes, dim=0))
                start = 0
                for k, count in enumerate(image_counts):
                    if count:
                        out[k][name] = torch.cat(blocks[start:start + count], dim=0)
                    start += count
            else:
                raise ValueError(f"cannot split the processor's {name!r} output (shape {tuple(value.shape)}) per item")
        return out

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens exactly as the model reads them right after the generation prompt,
        then the end-of-turn token (LLaVA ``</s>``, Qwen ``<|im_end|>``): the training labels, the
        likelihood targets, and the first token the classification scorer reads."""
        # Training draws the same answers (letters, facts) over and over: tokenise each once.
        ids = self._answer_cache.get(answer)
        if ids is None:
            ids = self._in_context_tokens(answer) + self._end_of_turn_ids()
            if len(self._answer_cache) < self._cache_size:
                self._answer_cache[answer] = ids
        return list(ids)

    def _in_context_tokens(self, answer: str) -> list[int]:
        """Tokens of ``answer`` as the chat template places it after the generation prompt.

        Encoded in context, not alone: a SentencePiece tokenizer encodes a lone " A" with an extra
        "▁" (["▁", "▁A"] or ["▁▁", "A"]) that it never produces after "ASSISTANT:", and other
        tokenizers may merge differently at the start of a text. The text between the generation
        prompt and the answer (LLaVA: a space, Qwen: none) is read off the template itself."""
        prompt, lead = self._generation_prompt_and_answer_lead()
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = self.tokenizer(prompt + lead + answer, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return full_ids[len(prompt_ids):]
        # The answer's first characters merged with the prompt's last token: the model continues
        # the prompt's own tokens, so the answer is spelt as it would start a fresh text.
        return self.tokenizer(lead + answer, add_special_tokens=False)["input_ids"]

    def _generation_prompt_and_answer_lead(self) -> tuple[str, str]:
        if self._lead is None:
            probe = [{"role": "user", "content": [{"type": "text", "text": "?"}]}]
            prompt = self.processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            marker = "Zq7answer"  # any answer: what the template writes before it is the lead
            full = self.processor.apply_chat_template(
                probe + [{"role": "assistant", "content": [{"type": "text", "text": marker}]}], tokenize=False)
            rest = full[len(prompt):] if full.startswith(prompt) else None
            if rest is None or marker not in rest:
                raise ValueError("the chat template does not write an assistant answer right after its generation "
                                 f"prompt ({prompt!r} then {full!r}); answers cannot be placed after prompts")
            self._lead = (prompt, rest[: rest.index(marker)])
        return self._lead

    def _end_of_turn_ids(self) -> list[int]:
        return self.tokenizer(self.vlm.adapter.answer_suffix(self.tokenizer), add_special_tokens=False)["input_ids"]

    def first_answer_token(self, answer: str) -> int:
        """The token the model emits first when it gives ``answer``."""
        return self.answer_ids(answer)[0]

    def training_example(self, item: Item, prompt: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        prompt = prompt if prompt is not None else self.prompt(item)
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
        prompts = self.prompts(items, demos)
        examples = [self.training_example(i, p) for i, p in zip(items, prompts)] if train else prompts
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
