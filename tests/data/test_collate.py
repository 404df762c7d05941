import pytest
import torch

from mllm_unlearn.data.collate import IGNORE, Encoder


def test_labels_cover_answer_tokens_only(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    encoder = Encoder(vlm)
    items = [i for i in benchmark.finetune_train if i.modality == "vqa"][:2] + \
            [i for i in benchmark.finetune_train if i.modality == "qa"][:2]
    batch = encoder.batch(items, train=True)
    image_id = vlm.tokenizer.convert_tokens_to_ids("<image>")
    pad_id = vlm.tokenizer.pad_token_id
    labels, ids = batch["labels"], batch["input_ids"]
    assert (labels[ids == image_id] == IGNORE).all()  # image tokens never scored
    assert (labels[batch["attention_mask"] == 0] == IGNORE).all()  # padding never scored
    for row, item in enumerate(items):
        answer = encoder.answer_ids(item.answer)
        scored = labels[row][labels[row] != IGNORE].tolist()
        assert scored == answer  # exactly the answer (and its end token), nothing of the prompt
        assert ids[row, -len(answer):].tolist() == answer
    assert (ids[:, :1] == pad_id).any()  # left padding in a mixed-length batch

    # Answers are tokenised once and cached; what a caller does with the list leaves the cache alone.
    first = encoder.answer_ids(items[0].answer)
    first.append(-1)
    assert encoder.answer_ids(items[0].answer) == first[:-1]


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "qwen2.5-vl"])
def test_tiny_models_answer_tokens_equal_the_answer_encoded_alone(family, benchmark, tiny_vlm):
    """Answers are encoded in context (after the template's generation prompt). The tiny word
    tokenizers split at spaces, so there this equals encoding "<lead><answer><end of turn>"
    alone, as the toolkit did before: the tiny models' figures do not depend on the change."""
    vlm = tiny_vlm(family)
    encoder = Encoder(vlm)
    lead, end = {"llava": (" ", "</s>"), "qwen2-vl": ("", "<|im_end|>"), "qwen2.5-vl": ("", "<|im_end|>")}[family]
    items = benchmark.finetune_train + benchmark.pretrain_train + [i for s in benchmark.eval_splits.values() for i in s]
    answers = sorted({i.answer for i in items} | set("ABCD"))
    for answer in answers:
        alone = vlm.tokenizer(lead + answer + end, add_special_tokens=False)["input_ids"]
        assert encoder.answer_ids(answer) == alone, answer


def test_vqa_batch_has_one_image_per_vqa_item(benchmark, tiny_vlm):
    for family in ("llava", "qwen2.5-vl"):
        vlm = tiny_vlm(family)
        encoder = Encoder(vlm)
        vqa = [i for i in benchmark.eval_splits["forget"] if i.modality == "vqa"][:3]
        qa = [i for i in benchmark.eval_splits["forget"] if i.modality == "qa"][:3]
        batch = encoder.batch(vqa + qa, train=False)
        image_token = vlm.adapter.image_placeholder
        image_id = vlm.tokenizer.convert_tokens_to_ids(image_token)
        has_image = (batch["input_ids"] == image_id).any(dim=1)
        assert has_image.tolist() == [True] * 3 + [False] * 3
        with torch.no_grad():
            assert vlm.model(**batch).logits.shape[0] == 6


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "qwen2.5-vl"])
def test_left_padding_does_not_change_a_rows_logits(family, benchmark, tiny_vlm):
    """Batches are left-padded without explicit position ids. LLaVA's LM then numbers a padded
    row's positions from the padding, but rotary attention depends only on position differences
    and padding is masked, so the row's logits equal its unpadded ones (Qwen computes its own
    multimodal positions from the attention mask). Guards against a real padding bug."""
    vlm = tiny_vlm(family)
    encoder = Encoder(vlm)
    items = [i for i in benchmark.finetune_train if i.modality == "qa"][:1] + \
            [i for i in benchmark.eval_splits["forget"] if i.modality == "vqa" and i.task == "mcq"][:1]
    batch = encoder.batch(items, train=True)
    assert (batch["attention_mask"][0] == 0).any() or (batch["attention_mask"][1] == 0).any()
    vlm.model.eval()
    with torch.no_grad():
        together = vlm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, item in enumerate(items):
            alone = encoder.batch([item], train=True)
            logits = vlm.model(**{k: v for k, v in alone.items() if k != "labels"}).logits[0]
            length = alone["input_ids"].shape[1]
            torch.testing.assert_close(together[row, -length:], logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "qwen2.5-vl"])
def test_prompts_encoded_together_equal_each_encoded_alone(family, benchmark, tiny_vlm):
    """``Encoder.prompts`` makes one processor call for a whole batch, then strips the padding
    and splits the images back per item: every tensor must equal a processor call on that item
    alone (mixed lengths, with and without images, and with few-shot demonstrations)."""
    from mllm_unlearn.data.collate import messages_for

    vlm = tiny_vlm(family)
    forget = benchmark.eval_splits["forget"]
    items = [i for i in forget if i.modality == "vqa"][:3] + [i for i in forget if i.modality == "qa"][:3]
    demos = [i for i in benchmark.eval_splits["retain"] if i.modality == "vqa" and i.task == "mcq"][:2]
    for shots in ((), demos):
        together = Encoder(vlm).prompts(items, shots)
        for item, encoded in zip(items, together):
            text = vlm.processor.apply_chat_template(messages_for(item, shots), add_generation_prompt=True, tokenize=False)
            images = [d.image for d in list(shots) + [item] if d.image is not None]
            alone = vlm.processor(text=[text], images=images or None, return_tensors="pt")
            alone = {k: v for k, v in alone.items() if isinstance(v, torch.Tensor)}
            assert sorted(encoded) == sorted(alone)
            for name, value in alone.items():
                assert torch.equal(encoded[name], value), (family, name)


def test_a_tokenizer_without_pad_token_is_encoded_item_by_item(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:4]
    batched = Encoder(vlm).prompts(items)
    vlm.processor.tokenizer.pad_token = None
    assert vlm.processor.tokenizer.pad_token is None
    alone = Encoder(vlm).prompts(items)
    for a, b in zip(batched, alone):
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_prompt_cache_encodes_each_prompt_once(benchmark, tiny_vlm, monkeypatch):
    vlm = tiny_vlm("llava")
    encoder = Encoder(vlm)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:4]
    calls = []
    original = encoder._encode_parts
    monkeypatch.setattr(encoder, "_encode_parts", lambda batch, demos: calls.append(len(batch)) or original(batch, demos))
    first = encoder.prompts(items + items[:1])  # a repeated item is encoded once
    again = encoder.prompts(items)
    assert calls == [4]
    assert all(a is b for a, b in zip(first, again))


def test_a_cached_prompt_is_never_served_for_another_image(tiny_vlm):
    """Prompts are cached by their images' content; a freed image's id, reused by a new image,
    must not bring back the freed image's pixels."""
    from PIL import Image

    from mllm_unlearn.data.items import Item

    vlm = tiny_vlm("qwen2.5-vl")
    encoder = Encoder(vlm)
    for shade in range(0, 250, 50):
        item = Item("p", "forget", "vqa", "generation", "Who is this?", "Ann", Image.new("RGB", (32, 32), (shade,) * 3))
        fresh = Encoder(vlm).prompt(item)["pixel_values"]
        assert torch.equal(encoder.prompt(item)["pixel_values"], fresh), shade
        del item


def _portrait_items(shades, questions=("Who is this?", "Where does this person live?")):
    from PIL import Image

    from mllm_unlearn.data.items import Item

    return [Item("p", "forget", "vqa", "generation", question, "Ann", Image.new("RGB", (32, 32), (shade, 9, 9)))
            for shade in shades for question in questions]


def test_identical_images_share_one_cached_block_of_pixels(tiny_vlm):
    vlm = tiny_vlm("qwen2.5-vl")
    encoder = Encoder(vlm)
    # two questions on one portrait, and the same portrait again as a separate (equal) image object
    items = _portrait_items([10]) + _portrait_items([10], ("What does this person do?",))
    prompts = encoder.prompts(items)
    assert len(encoder._cache) == 3 and encoder._cache.image_count() == 1
    assert prompts[0]["pixel_values"] is prompts[1]["pixel_values"] is prompts[2]["pixel_values"]
    fresh = Encoder(vlm, cache_size=0).prompts(items)
    for cached, alone in zip(prompts, fresh):
        assert sorted(cached) == sorted(alone) and all(torch.equal(cached[k], alone[k]) for k in cached)
    pixel_bytes = prompts[0]["pixel_values"].numel() * prompts[0]["pixel_values"].element_size()
    sequence_bytes = sum(p[k].numel() * p[k].element_size() for p in prompts for k in p
                         if k not in ("pixel_values", "image_grid_thw"))
    grid_bytes = prompts[0]["image_grid_thw"].numel() * prompts[0]["image_grid_thw"].element_size()
    assert encoder._cache.nbytes == pixel_bytes + grid_bytes + sequence_bytes  # the pixels counted once


def test_byte_bounded_cache_evicts_least_recent_and_re_encodes_correctly(tiny_vlm, monkeypatch):
    vlm = tiny_vlm("qwen2.5-vl")
    items = _portrait_items([10, 60, 110, 160], questions=("Who is this?",))
    one = Encoder(vlm, cache_size=0).prompts(items[:1])[0]
    per_prompt = sum(t.numel() * t.element_size() for t in one.values())
    encoder = Encoder(vlm, cache_bytes=int(2.5 * per_prompt))  # room for two prompts with their pixels
    calls = []
    original = encoder._encode_parts
    monkeypatch.setattr(encoder, "_encode_parts", lambda batch, demos: calls.append(len(batch)) or original(batch, demos))
    first = encoder.prompts(items)
    assert calls == [4] and len(encoder._cache) == 2 and encoder._cache.nbytes <= encoder._cache.max_bytes
    assert encoder._cache.image_count() == 2 and encoder._cache.evictions == 2  # their pixels left with them
    encoder.prompts(items[3:])  # cached: no processor call, and now the most recently used
    assert calls == [4]
    again = encoder.prompts(items[:1])  # evicted: encoded again, and identical to a fresh encoding
    assert calls == [4, 1] and torch.equal(again[0]["pixel_values"], first[0]["pixel_values"])
    assert all(torch.equal(again[0][k], one[k]) for k in one)
    kept = [encoder._key(item, ()) in encoder._cache for item in items]
    assert kept == [True, False, False, True] and encoder._cache.image_count() == 2  # item 2 went out for item 0

    tiny = Encoder(vlm, cache_bytes=per_prompt // 2)  # a prompt larger than the whole budget is not kept
    assert torch.equal(tiny.prompts(items[:1])[0]["pixel_values"], one["pixel_values"])
    assert len(tiny._cache) == 0 and tiny._cache.nbytes == 0


def test_the_cache_budget_can_be_set_from_the_environment(tiny_vlm, monkeypatch):
    import pytest

    from mllm_unlearn.data.collate import DEFAULT_PROMPT_CACHE_BYTES

    vlm = tiny_vlm("llava")
    assert Encoder(vlm)._cache.max_bytes == DEFAULT_PROMPT_CACHE_BYTES == 1 << 30
    monkeypatch.setenv("MLLM_UNLEARN_PROMPT_CACHE_BYTES", "2e6")
    assert Encoder(vlm)._cache.max_bytes == 2_000_000
    monkeypatch.setenv("MLLM_UNLEARN_PROMPT_CACHE_BYTES", "lots")
    with pytest.raises(ValueError, match="MLLM_UNLEARN_PROMPT_CACHE_BYTES='lots'"):
        Encoder(vlm)
