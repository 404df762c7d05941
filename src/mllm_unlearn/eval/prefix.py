"""Shared-prefix scoring: the questions about one portrait share everything up to the end of its
image tokens (chat template start, the image); that prefix is run once (one pass of the vision
tower, one prefill of its key/value cache) and each question's own tokens continue from a copy of
its cache, batched.

Exact up to floating-point rounding: the model is causal, so the prefix's keys and values do not
depend on what follows, and each continuation sees the positions it has in the whole prompt
(right-padded continuations: padding comes after every real token, which never attends to it).
Only for a model without forward hooks: a hook may read the whole sequence (a steering edit reads
the prompt's last position), which a prefix pass would change; a weight edit changes no such thing.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn


def _foreign(hooks: Any) -> bool:
    # transformers installs hooks of its own that only record outputs (output_hidden_states)
    return any(not getattr(hook, "__module__", "").startswith("transformers.") for hook in hooks.values())


def has_forward_hooks(model: nn.Module) -> bool:
    """Whether any forward hook not transformers' own (an edit's, an attack's) is on the model: it
    could read more than a position's own past."""
    from torch.nn.modules import module as torch_module

    if _foreign(torch_module._global_forward_hooks) or _foreign(torch_module._global_forward_pre_hooks):
        return True
    return any(_foreign(m._forward_hooks) or _foreign(m._forward_pre_hooks) for m in model.modules())


def cache_keyword(model: nn.Module) -> str:
    """How the model's forward takes a key/value cache: ``cache=`` from transformers 5.24, before
    that ``past_key_values=``."""
    import inspect

    inner = getattr(model, "model", model)  # the decoder's own forward (the same keyword as the model's)
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def image_token_span_end(input_ids: torch.Tensor, image_token_ids: set[int]) -> int:
    """One past the last image token of a (1, L) prompt; 0 without an image."""
    row = input_ids[0].tolist()
    last = max((k for k, token in enumerate(row) if token in image_token_ids), default=-1)
    return last + 1


def shared_prefix_length(prompts: Sequence[dict[str, torch.Tensor]], image_token_ids: set[int]) -> int:
    """The prompts' common token prefix, if it holds every image token (there is one) and leaves
    each prompt at least one token of its own (whose logits are read); 0 when there is no such prefix."""
    rows = [p["input_ids"][0] for p in prompts]
    shortest = min(len(r) for r in rows)
    first = rows[0][:shortest]
    same = torch.ones(shortest, dtype=torch.bool)
    for row in rows[1:]:
        same &= row[:shortest] == first
    differs = (~same).nonzero()
    length = int(differs[0]) if len(differs) else shortest
    length = min(length, shortest - 1)
    needed = max(image_token_span_end(p["input_ids"], image_token_ids) for p in prompts)
    return length if needed and length >= needed else 0


def same_images(prompts: Sequence[dict[str, torch.Tensor]], sequence_keys: set[str]) -> bool:
    """Whether every prompt carries the same per-image tensors (pixel values, grids)."""
    first = prompts[0]
    names = [n for n in first if n not in sequence_keys]
    return all(set(p) == set(first) and all(torch.equal(p[n], first[n]) for n in names) for p in prompts[1:])


# The copies of a prefix's cache one continuation batch holds (one per row, every layer's keys and
# values): at 7B scale a 600-token prefix is about 300 MB a row, so a batch of 32 would add ~10 GB.
# Batches are cut to stay under this many bytes (at least one row).
COPIES_BYTES = 2 * 1024 ** 3


def rows_per_batch(cache: Any, batch_size: int) -> int:
    """``batch_size``, or fewer so that the batch's copies of ``cache`` (one row) fit ``COPIES_BYTES``."""
    row = sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
              for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
    return max(1, min(batch_size, COPIES_BYTES // row)) if row else batch_size


@torch.no_grad()
def prefix_cache(vlm: Any, prompt: dict[str, torch.Tensor], prefix_length: int) -> Any:
    """The key/value cache of ``prompt``'s first ``prefix_length`` tokens (with its images), one row."""
    sequence_keys = {n for n, v in prompt.items() if v.dim() == 2 and v.shape == prompt["input_ids"].shape}
    prefix = {n: (v[:, :prefix_length] if n in sequence_keys else v).to(vlm.device) for n, v in prompt.items()}
    output = vlm.model(**prefix, use_cache=True, logits_to_keep=1)
    return output.cache if cache_keyword(vlm.model) == "cache" else output.past_key_values


@torch.no_grad()
def generate_after_prefix(vlm: Any, prompts: Sequence[dict[str, torch.Tensor]], prefix_length: int, batch_size: int,
                          max_new_tokens: int, pad_id: int) -> list[str]:
    """Greedy generations after each prompt (all sharing their first ``prefix_length`` tokens and
    their images) from one prefix pass: each batch continues from a copy of the prefix's cache, its
    own tokens left-padded after the prefix (the positions the model derives from the attention
    mask skip its gap; Qwen's M-RoPE offset is the one the prefix pass recorded)."""
    model, device = vlm.model, vlm.device
    cache = prefix_cache(vlm, prompts[0], prefix_length)
    batch_size = rows_per_batch(cache, batch_size)
    shared = prompts[0]["input_ids"][0, :prefix_length]
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        suffixes = [p["input_ids"][0, prefix_length:] for p in chunk]
        length = max(len(s) for s in suffixes)
        ids = torch.full((len(chunk), prefix_length + length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :prefix_length] = shared
        mask[:, :prefix_length] = 1
        for k, suffix in enumerate(suffixes):
            ids[k, prefix_length + length - len(suffix):] = suffix
            mask[k, prefix_length + length - len(suffix):] = 1
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(chunk))
        output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=pad_id, **{cache_keyword(model): rows})
        new_tokens = output[:, prefix_length + length:]
        texts += vlm.decode(new_tokens)  # as Evaluator.generate decodes (apostrophes inside words kept)
    return texts


@torch.no_grad()
def last_token_logprobs(vlm: Any, prompts: Sequence[dict[str, torch.Tensor]], prefix_length: int,
                        batch_size: int, token_ids: Sequence[int]) -> list[torch.Tensor]:
    """Log-probabilities of ``token_ids`` after each prompt (all sharing their first
    ``prefix_length`` tokens and their images), from one prefix pass and batched continuations."""
    model, device = vlm.model, vlm.device
    cache = prefix_cache(vlm, prompts[0], prefix_length)
    batch_size = rows_per_batch(cache, batch_size)
    wanted = torch.tensor(list(token_ids), device=device)
    scores: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        suffixes = [p["input_ids"][0, prefix_length:] for p in chunk]
        length = max(len(s) for s in suffixes)
        ids = torch.zeros(len(chunk), length, dtype=torch.long)
        mask = torch.zeros(len(chunk), prefix_length + length, dtype=torch.long)
        mask[:, :prefix_length] = 1
        for k, suffix in enumerate(suffixes):
            ids[k, :len(suffix)] = suffix
            mask[k, prefix_length:prefix_length + len(suffix)] = 1
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(chunk))
        positions = vlm.adapter.continuation_positions(model, prefix_length, length, len(chunk))
        last = torch.tensor([len(s) - 1 for s in suffixes])
        kept = sorted(set(last.tolist()))  # the logits of each row's last real token, nothing more
        extra = {} if positions is None else {"position_ids": positions}
        extra[cache_keyword(model)] = rows
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                       logits_to_keep=torch.tensor(kept, device=device), **extra).logits
        column = torch.tensor([kept.index(k) for k in last.tolist()], device=device)
        picked = logits[torch.arange(len(chunk), device=device), column].float()
        scores += list(torch.log_softmax(picked, dim=-1)[:, wanted].cpu())
    return scores
