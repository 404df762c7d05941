"""Items -> model inputs. Prompts go through the processor's chat template; labels cover
answer tokens only (prompt, image and padding positions are -100)."""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Any, Sequence

import torch

from .items import Item
from .prompts import mcq_prompt

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


# The prompt cache's byte budget: Qwen's encoded pixels are 6-24 MB per image at the 7B models'
# max_pixels, so an unbounded cache of a benchmark's prompts would not fit in memory.
# MLLM_UNLEARN_PROMPT_CACHE_BYTES overrides it for every Encoder (0 switches caching off).
DEFAULT_PROMPT_CACHE_BYTES = 1 << 30


def default_prompt_cache_bytes() -> int:
    value = os.environ.get("MLLM_UNLEARN_PROMPT_CACHE_BYTES")
    if value is None:
        return DEFAULT_PROMPT_CACHE_BYTES
    try:
        budget = int(float(value))
    except ValueError:
        budget = -1
    if budget < 0:
        raise ValueError(f"MLLM_UNLEARN_PROMPT_CACHE_BYTES={value!r}: expected a number of bytes >= 0")
    return budget


_FINGERPRINT = "_mllm_unlearn_fingerprint"


def image_fingerprint(image: Any) -> tuple:
    """A key naming an image by its content (mode, size, pixel bytes): identical images share it.
    Memoised on the image object; an object without pixel bytes is named by its id()."""
    known = getattr(image, _FINGERPRINT, None)
    if known is not None:
        return known
    if not hasattr(image, "tobytes"):
        return ("id", id(image))
    digest = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
    key = ("pixels", getattr(image, "mode", None), tuple(getattr(image, "size", ())), digest)
    try:
        setattr(image, _FINGERPRINT, key)
    except AttributeError:  # an object that takes no attributes: hash again next time
        pass
    return key


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class PromptCache:
    """Encoded prompts, least recently used first out, under a byte budget and an entry cap.

    A prompt's per-image tensors (pixel values, grids) are stored once per distinct image
    (``image_fingerprint``) and shared by every prompt that shows it: a benchmark asks several
    questions about each portrait. An image's block is dropped with the last prompt using it.
    ``nbytes`` counts each shared block once."""

    def __init__(self, max_bytes: int | None = None, max_entries: int = 50_000):
        self.max_bytes = default_prompt_cache_bytes() if max_bytes is None else max_bytes
        self.max_entries = max_entries
        self._prompts: OrderedDict[tuple, tuple[dict[str, torch.Tensor], tuple, int]] = OrderedDict()
        self._images: dict[tuple, list[Any]] = {}  # fingerprint -> [tensors, prompts using it, bytes]
        self.nbytes = 0
        self.evictions = 0
        self._pinned: list[Any] = []  # objects named by id(): kept alive so the id is not reused

    def __len__(self) -> int:
        return len(self._prompts)

    def __contains__(self, key: tuple) -> bool:
        return key in self._prompts

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        entry = self._prompts.get(key)
        if entry is None:
            return None
        self._prompts.move_to_end(key)
        return entry[0]

    def image_count(self) -> int:
        return len(self._images)

    def put(self, key: tuple, sequence: dict[str, torch.Tensor], images: Sequence[tuple[tuple, dict[str, torch.Tensor], Any]]
            ) -> dict[str, torch.Tensor]:
        """Store a prompt: its sequence tensors and, per image (fingerprint, tensors, the image), the
        image's block. Returns the prompt as callers get it (the images' blocks concatenated in order)."""
        shared = []
        for fingerprint, tensors, image in images:
            stored = self._images.get(fingerprint)
            if stored is None and self.max_entries > 0:
                stored = [tensors, 0, _nbytes(tensors)]
                self._images[fingerprint] = stored
                self.nbytes += stored[2]
                if fingerprint[0] == "id":
                    self._pinned.append(image)
            shared.append(stored[0] if stored is not None else tensors)
            if stored is not None:
                stored[1] += 1
        prompt = dict(sequence)
        for name in (shared[0] if shared else {}):
            blocks = [block[name] for block in shared]
            prompt[name] = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
        own = _nbytes(sequence) + sum(_nbytes({n: prompt[n]}) for n in (shared[0] if len(shared) > 1 else {}))
        if self.max_entries <= 0:
            return prompt
        self._prompts[key] = (prompt, tuple(f for f, _, _ in images), own)
        self.nbytes += own
        while self._prompts and (self.nbytes > self.max_bytes or len(self._prompts) > self.max_entries):
            self._evict_oldest()
        return prompt

    def _evict_oldest(self) -> None:
        _, (_, fingerprints, own) = self._prompts.popitem(last=False)
        self.nbytes -= own
        self.evictions += 1
        for fingerprint in fingerprints:
            stored = self._images[fingerprint]
            stored[1] -= 1
            if stored[1] == 0:
                del self._images[fingerprint]
                self.nbytes -= stored[2]
        if not self._images:
            self._pinned.clear()


class Encoder:
    """Turns items into padded batches for one model's processor (with a prompt cache).

    ``protocol``: the evaluation protocol the prompts are for. Under a benchmark's protocol
    whose own code writes this family's prompts (``adapter.benchmark_prompts``; MLLMU-Bench
    for LLaVA), prompts are that benchmark's text; otherwise the processor's chat template.
    """

    def __init__(self, vlm: Any, cache_size: int = 50_000, protocol: str = "ours", cache_bytes: int | None = None):
        """``cache_size``: most prompts cached (0: none); ``cache_bytes``: the prompt cache's byte
        budget (default ``DEFAULT_PROMPT_CACHE_BYTES``, 1 GiB, or MLLM_UNLEARN_PROMPT_CACHE_BYTES)."""
        self.vlm = vlm
        self.protocol = protocol
        self.benchmark_prompt = protocol in vlm.adapter.benchmark_prompts
        self.processor = vlm.processor
        self.tokenizer = vlm.processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Prompts are keyed by their images' content, so identical images share their pixels.
        self._cache = PromptCache(cache_bytes, max_entries=cache_size)
        self._answer_cache: dict[str, list[int]] = {}
        self._lead: tuple[str, str] | None = None  # (generation prompt, text the template writes before an answer)

    def _key(self, item: Item, demos: Sequence[Item]) -> tuple:
        images = [d.image for d in list(demos) + [item] if d.image is not None]
        return (user_text(item), tuple(user_text(d) + d.answer for d in demos), tuple(image_fingerprint(i) for i in images))

    def prompt(self, item: Item, demos: Sequence[Item] = ()) -> dict[str, torch.Tensor]:
        return self.prompts([item], demos)[0]

    def prompts(self, items: Sequence[Item], demos: Sequence[Item] = ()) -> list[dict[str, torch.Tensor]]:
        """Each item's encoded prompt (batch of one), the uncached ones through one processor call.

        The processor's per-call overhead (kwargs merging and validation) costs more than the
        tokenisation itself, so encoding a batch at once is about twice as fast; padding is
        stripped again, so each prompt is exactly what a call on that item alone returns."""
        keys = [self._key(item, demos) for item in items]
        found: dict[tuple, dict[str, torch.Tensor]] = {}
        missing: dict[tuple, Item] = {}
        for key, item in zip(keys, items):
            if key in found or key in missing:
                continue
            cached = self._cache.get(key)
            if cached is not None:
                found[key] = cached
            else:
                missing[key] = item
        if missing:
            for (key, item), (sequence, per_image) in zip(missing.items(), self._encode_parts(list(missing.values()), demos)):
                images = [d.image for d in list(demos) + [item] if d.image is not None]
                found[key] = self._cache.put(key, sequence, [(fp, block, image) for fp, block, image in
                                                              zip(key[2], per_image, images)])
        return [found[key] for key in keys]

    def prompt_text(self, item: Item, demos: Sequence[Item] = ()) -> str:
        """The prompt as text, before the processor expands image placeholders and tokenises it."""
        if self.benchmark_prompt:
            from .mllmu_protocol import PROTOCOL, eval_prompt

            if self.protocol == PROTOCOL:
                return eval_prompt(item, demos, self.vlm.adapter.image_placeholder)
            raise ValueError(f"no prompt text is known for protocol {self.protocol!r}")
        return self.processor.apply_chat_template(messages_for(item, demos), add_generation_prompt=True, tokenize=False)

    def _encode(self, items: Sequence[Item], demos: Sequence[Item]) -> list[dict[str, torch.Tensor]]:
        """Each item's prompt through the processor, uncached (per-image tensors concatenated)."""
        out = []
        for sequence, per_image in self._encode_parts(items, demos):
            prompt = dict(sequence)
            for name in (per_image[0] if per_image else {}):
                prompt[name] = torch.cat([block[name] for block in per_image], dim=0)
            out.append(prompt)
        return out

    def _encode_parts(self, items: Sequence[Item], demos: Sequence[Item]
                      ) -> list[tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]]:
        """Per item: its sequence-aligned tensors, and one dict of per-image tensors per image."""
        if len(items) > 1 and self.tokenizer.pad_token is None:
            # The processor cannot pad a batch without a pad token: one call per item, as before.
            return [parts for item in items for parts in self._encode_parts([item], demos)]
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
        sequences: list[dict[str, torch.Tensor]] = [{} for _ in items]
        blocks_of: list[list[dict[str, torch.Tensor]]] = [[{} for _ in range(count)] for count in image_counts]
        for name, value in encoded.items():
            if _is_sequence_aligned(value, ids):
                for k, length in enumerate(lengths):
                    row = value[k, ids.shape[1] - length:] if left else value[k, :length]
                    sequences[k][name] = row[None].clone()
            elif value.shape[0] in (len(images), sum(rows)) and images:
                # Per-image tensors: one row per image, or (Qwen's patches) each image's block of rows.
                sizes = rows if value.shape[0] == sum(rows) else [1] * len(images)
                blocks = list(value.split(sizes, dim=0))
                start = 0
                for k, count in enumerate(image_counts):
                    for j in range(count):
                        blocks_of[k][j][name] = blocks[start + j].clone()  # not a view of the whole batch
                    start += count
            else:
                raise ValueError(f"cannot split the processor's {name!r} output (shape {tuple(value.shape)}) per item")
        return list(zip(sequences, blocks_of))

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens exactly as the model reads them right after the generation prompt,
        then the end-of-turn token (LLaVA ``</s>``, Qwen ``<|im_end|>``): the training labels, the
        likelihood targets, and the first token the classification scorer reads."""
        # Training draws the same answers (letters, facts) over and over: tokenise each once.
        ids = self._answer_cache.get(answer)
        if ids is None:
            ids = self._in_context_tokens(answer) + self._end_of_turn_ids()
            if len(self._answer_cache) < self._cache.max_entries:
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
