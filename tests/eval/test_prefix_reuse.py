"""Shared-prefix scoring (eval/prefix.py): one pass over each portrait's prefix, the same scores as
scoring every question whole, on every family; never under a hook."""
import pytest
import torch

from mllm_unlearn.eval import EvalConfig, Evaluator, prefix
from mllm_unlearn.eval.prefix import has_forward_hooks, prefix_cache, rows_per_batch

from ..conftest import FAMILIES


def portrait_questions(benchmark):
    """Several questions per portrait: each forget person's VQA questions with their own image, and
    the same questions again with a second person's portrait (a group of its own)."""
    items = [i for i in benchmark.eval_splits["forget"] if i.modality == "vqa" and i.task == "mcq"]
    qa = [i for i in benchmark.eval_splits["forget"] if i.modality == "qa" and i.task == "mcq"][:3]
    return items + qa


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_scores_equal_whole_prompt_scores(family, benchmark, tiny_vlm, monkeypatch):
    vlm = tiny_vlm(family)
    items = portrait_questions(benchmark)
    people = {}
    for item in items:
        if item.image is not None:
            people.setdefault(item.person_id, []).append(item)
    assert any(len(group) >= 2 for group in people.values())  # a portrait asked about more than once
    whole = Evaluator(vlm, EvalConfig(batch_size=3, progress=False))
    whole.share_prefixes = False
    shared = Evaluator(vlm, EvalConfig(batch_size=3, progress=False))
    expected = whole._score_items(items, "mcq", ())
    scores_whole = {k: whole.letter_scores([items[k]])[0] for k in range(len(items))}

    prefix_forwards = []
    original = type(vlm.model).forward

    def counting(self, *args, **kwargs):
        if kwargs.get("pixel_values") is not None:
            prefix_forwards.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(vlm.model), "forward", counting)
    scores = shared._shared_prefix_scores(items, ())
    portraits = [g for g in people.values() if len(g) >= 2]
    assert len(scores) == sum(len(g) for g in portraits)  # every portrait asked about twice or more
    assert prefix_forwards == [1] * len(portraits)  # each portrait's image encoded once, in a batch of one
    for k, letters in scores.items():
        for letter, value in letters.items():
            assert value == pytest.approx(scores_whole[k][letter], abs=2e-4), (k, letter)
    monkeypatch.setattr(type(vlm.model), "forward", original)
    assert shared._score_items(items, "mcq", ()) == expected  # the same records, in the items' order


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_generations_equal_whole_prompt_generations(family, benchmark, tiny_vlm):
    """The generate scorer (cloze, generation, MLLMU-Bench's protocol) continues from the portrait's
    cached prefix too: the same greedy text, token for token."""
    vlm = tiny_vlm(family)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "generation"]
    cfg = EvalConfig(batch_size=3, max_new_tokens=6, progress=False)
    whole, shared = Evaluator(vlm, cfg), Evaluator(vlm, cfg)
    whole.share_prefixes = False
    groups = shared._portrait_groups(items, ())
    assert groups and all(len(members) >= 2 for members, _, _ in groups)
    expected = whole._score_items(items, "generation", ())
    assert len({r["prediction"] for r in expected}) > 1  # not one text for every question
    assert shared._score_items(items, "generation", ()) == expected


def test_no_shared_prefix_under_a_hook(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    items = portrait_questions(benchmark)
    evaluator = Evaluator(vlm, EvalConfig(batch_size=4, progress=False))
    assert not has_forward_hooks(vlm.model) and evaluator._shared_prefix_scores(items, ())
    layer = vlm.adapter.lm_layers(vlm.model)[0]
    handle = layer.register_forward_hook(lambda module, args, output: output)  # e.g. a steering edit's
    try:
        assert has_forward_hooks(vlm.model) and evaluator._shared_prefix_scores(items, ()) == {}
    finally:
        handle.remove()
    assert torch.is_grad_enabled()


def test_continuation_batches_are_cut_to_the_copies_byte_budget(benchmark, tiny_vlm, monkeypatch):
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.eval_splits["forget"] if i.modality == "vqa" and i.task == "mcq"]
    evaluator = Evaluator(vlm, EvalConfig(batch_size=8, progress=False))
    (members, prompts, length), *_ = evaluator._portrait_groups(items, ())
    with torch.no_grad():
        cache = prefix_cache(vlm, prompts[0], length)
    row = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    assert rows_per_batch(cache, 8) == 8
    monkeypatch.setattr(prefix, "COPIES_BYTES", 2 * row)
    assert rows_per_batch(cache, 8) == 2
    monkeypatch.setattr(prefix, "COPIES_BYTES", 1)
    assert rows_per_batch(cache, 8) == 1  # one row at least
    whole = Evaluator(vlm, EvalConfig(batch_size=8, progress=False))
    whole.share_prefixes = False
    assert evaluator._score_items(items, "mcq", ()) == whole._score_items(items, "mcq", ())
