"""Our encoding under the real LLaVA-1.5, Qwen2-VL and Qwen2.5-VL tokenizers, chat templates and
image processors (built from registry packages and the checkpoints' JSON files, no download:
see real_checkpoints.py).

- prompt + answer as we encode them = the real chat template's conversation, token for token, and
  the labels cover exactly the answer and its end-of-turn token;
- the four option letters are four distinct tokens, the ones the likelihood scorer reads;
- image placeholder counts are the real processors' (576 for LLaVA-1.5; Qwen's from the grid),
  and Qwen's ``max_pixels`` can be capped.
"""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mllm_unlearn.data.collate import IGNORE, Encoder, messages_for
from mllm_unlearn.data.items import OPTION_KEYS, Item
from mllm_unlearn.eval.evaluator import Evaluator, option_letter_ids
from mllm_unlearn.models import VLM, adapter_for_family, load_vlm

from . import real_checkpoints as real

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl")
# transformers 5 reads a LLaVA checkpoint's tokenizer.json as it is (model type "llava" is on its
# list of hub tokenizer classes not to trust), i.e. with the SentencePiece normalizer LLaVA-1.5's
# file spells: "▁" prepended to every text. "llava-metaspace": the same vocabulary through the
# LlamaTokenizer class's own pipeline (a Metaspace that prepends "▁" only at the input's start),
# what AutoTokenizer builds from the tokenizer files alone.
VARIANTS = FAMILIES + ("llava-metaspace",)
LLAMA_BOS, LLAMA_EOS, LLAMA_SPACE = 1, 2, 29871  # <s>, </s>, "▁"
IM_END, NEWLINE = 151645, 198  # Qwen: <|im_end|>, "\n"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folders = {}

    def get(family: str):
        if family not in folders:
            folders[family] = real.write_checkpoint(family, tmp_path_factory.mktemp(family))
        return folders[family]

    return get


@pytest.fixture(scope="module")
def real_vlm(checkpoints):
    loaded = {}

    def get(variant: str) -> VLM:
        if variant not in loaded:
            vlm = load_vlm(checkpoints(variant.removesuffix("-metaspace")), device="cpu")
            if variant == "llava-metaspace":
                from transformers import LlamaTokenizer, LlavaProcessor

                tokenizer = LlamaTokenizer.from_pretrained(str(checkpoints("llava")), padding_side="left")
                assert type(tokenizer.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
                old = vlm.processor
                processor = LlavaProcessor(image_processor=old.image_processor, tokenizer=tokenizer,
                                           patch_size=old.patch_size, chat_template=old.chat_template,
                                           vision_feature_select_strategy=old.vision_feature_select_strategy,
                                           num_additional_image_tokens=old.num_additional_image_tokens)
                vlm = VLM(vlm.model, processor, vlm.adapter)
            loaded[variant] = vlm
        return loaded[variant]

    return get


# Token ids llama-tokenizer-js 1.2.2 gives (node, `llamaTokenizer.encode(text)`): an independent
# implementation of LLaMA-2's tokenizer, which adds the BOS and one leading space to every text.
LLAMA_JS_IDS = {
    "Hello world!": [1, 15043, 3186, 29991],
    "Hello": [1, 15043],
    " A": [1, 29871, 319],
    "A": [1, 319],
    "USER: What is the name of the person? ASSISTANT: Eliza Marbury-Quinn":
        [1, 3148, 1001, 29901, 1724, 338, 278, 1024, 310, 278, 2022, 29973, 319, 1799, 9047, 13566, 29901, 1260, 6619,
         1085, 11059, 29899, 2182, 2559],
    "née 1987 — Zürich ✓ 日本": [1, 302, 1318, 29871, 29896, 29929, 29947, 29955, 813, 24931, 29871, 30706, 29871, 30325, 30346],
    "\nJust give ONE letter representing the answer directly.\nASSISTANT:":
        [1, 29871, 13, 14084, 2367, 6732, 29923, 5497, 15783, 278, 1234, 4153, 29889, 13, 22933, 9047, 13566, 29901],
}


def test_llama2_tokenizer_gives_llama2_ids(real_vlm):
    loaded = real_vlm("llava").tokenizer
    assert type(loaded.backend_tokenizer.normalizer).__name__ == "Sequence"  # the file's own Prepend + Replace
    for text, ids in LLAMA_JS_IDS.items():
        assert loaded(text)["input_ids"] == ids, text
    metaspace = real_vlm("llava-metaspace").tokenizer  # identical unless the text begins with a space
    for text, ids in LLAMA_JS_IDS.items():
        assert metaspace(text)["input_ids"] == (ids if not text.startswith(" ") else [LLAMA_BOS, 319]), text
    for tokenizer in (loaded, metaspace):
        assert len(tokenizer) == 32002
        assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>", "</s>"]) == [32000, 32001, LLAMA_EOS]


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen2_tokenizer_gives_qwen2_ids(family, real_vlm):
    tokenizer = real_vlm(family).tokenizer
    assert tokenizer("Hello world!")["input_ids"] == [9707, 1879, 0]  # no BOS for Qwen2
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [151643, 151644, 151645, 151652, 151653, 151655]
    assert len(tokenizer) == real.QWEN_LAST_ADDED_ID[family] + 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def _items(benchmark) -> list[Item]:
    """A multiple-choice VQA item (the answer is a letter), an open QA item, a fill-in-the-blank
    VQA item and a training pair: every answer shape the toolkit trains on or scores."""
    splits = benchmark.eval_splits["forget"]
    pick = lambda modality, task: next(i for i in splits if i.modality == modality and i.task == task)  # noqa: E731
    return [pick("vqa", "mcq"), pick("qa", "generation"), pick("vqa", "cloze"), benchmark.forget_train[0]]


def _encode(vlm: VLM, text: str, item: Item) -> list[int]:
    images = [item.image] if item.image is not None else None
    return vlm.processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()


def _template_answer(vlm: VLM, item: Item, answer: str) -> tuple[list[int], list[int], list[int]]:
    """(generation prompt tokens, the answer's tokens, what the template writes after the answer)
    from the real chat template's rendering of the whole conversation."""
    messages = messages_for(item)
    prompt = _encode(vlm, vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), item)
    conversation = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = _encode(vlm, vlm.processor.apply_chat_template(conversation, tokenize=False), item)
    assert full[: len(prompt)] == prompt, "the conversation begins with the generation prompt"
    after = full[len(prompt):]
    trailer = [IM_END, NEWLINE] if vlm.adapter.family != "llava" else [LLAMA_SPACE]
    assert after[-len(trailer):] == trailer
    return prompt, after[: -len(trailer)], trailer


@pytest.mark.parametrize("variant", VARIANTS)
def test_prompt_and_answer_are_the_real_templates_conversation(variant, real_vlm, benchmark):
    """Qwen's template ends an answer with <|im_end|> and a newline: we train on the answer and
    <|im_end|> (generation stops there; the newline only separates it from a next turn).
    llava-hf's template ends an answer with a space and no end token; LLaVA-1.5 was trained
    with </s> after each answer (its conv_llava_v1 format), and so are we, in place of the space."""
    vlm = real_vlm(variant)
    encoder = Encoder(vlm)
    end = [IM_END] if vlm.adapter.family != "llava" else [LLAMA_EOS]
    for item in _items(benchmark):
        prompt, answer, _ = _template_answer(vlm, item, item.answer)
        assert answer and vlm.tokenizer.decode(answer).strip() == item.answer
        example = encoder.training_example(item)
        ids, labels = example["input_ids"][0].tolist(), example["labels"][0].tolist()
        assert ids == prompt + answer + end, item.question
        assert [t for t in labels if t != IGNORE] == answer + end
        assert all(t == IGNORE for t in labels[: len(prompt)])  # nothing of the prompt or the image is scored
        assert encoder.answer_ids(item.answer) == answer + end
    if vlm.adapter.family != "llava":  # the real template's default system prompt is part of every prompt
        assert vlm.tokenizer.decode(prompt).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


@pytest.mark.parametrize("variant", VARIANTS)
def test_option_letters_are_four_distinct_first_answer_tokens(variant, real_vlm, benchmark):
    vlm = real_vlm(variant)
    letters = option_letter_ids(Encoder(vlm))
    item = _items(benchmark)[0]
    for letter in OPTION_KEYS:  # the token the template puts first when the answer is that letter
        _, answer, _ = _template_answer(vlm, item, letter)
        assert answer == [letters[letter]]
    expected = {"A": "▁A", "B": "▁B", "C": "▁C", "D": "▁D"} if vlm.adapter.family == "llava" else dict(zip("ABCD", "ABCD"))
    assert vlm.tokenizer.convert_ids_to_tokens(list(letters.values())) == list(expected.values())
    if variant == "llava":
        # Why letters are read in context: encoded alone, " A" starts with a "▁" every letter shares.
        assert {vlm.tokenizer(" " + k, add_special_tokens=False)["input_ids"][0] for k in OPTION_KEYS} == {LLAMA_SPACE}


@pytest.mark.parametrize("variant", ["llava", "qwen2.5-vl"])
def test_likelihood_scorer_reads_the_letter_tokens(variant, real_vlm, benchmark):
    vlm = real_vlm(variant)
    evaluator = Evaluator(vlm)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:2]
    assert {i.modality for i in items} == {"vqa"} or len(items) == 2
    target = evaluator.letter_ids["C"]
    head = vlm.model.get_output_embeddings()

    def favour_c(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., target] += 30.0
        return logits

    handle = head.register_forward_hook(favour_c)
    try:
        scores = evaluator.letter_scores(items)
        inputs = evaluator._inputs(items, ())
        with torch.no_grad():
            logprobs = torch.log_softmax(vlm.model(**inputs).logits[:, -1].float(), dim=-1)
    finally:
        handle.remove()
    for row, score in zip(logprobs, scores):
        assert max(score, key=score.get) == "C"
        assert score == pytest.approx({k: float(row[i]) for k, i in evaluator.letter_ids.items()})


def test_letters_sharing_a_first_token_are_refused(real_vlm, monkeypatch):
    monkeypatch.setattr(Encoder, "first_answer_token", lambda self, answer: LLAMA_SPACE)
    with pytest.raises(ValueError, match="option letters do not start with distinct tokens"):
        Evaluator(real_vlm("llava"))


def _portrait(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (120, 90, 60))


def _vqa(image: Image.Image) -> Item:
    return Item("p", "forget", "vqa", "generation", "Who is this?", "Ann", image)


@pytest.mark.parametrize("size", [(336, 336), (500, 300), (32, 32)])
def test_llava_image_gives_576_placeholders(size, real_vlm):
    vlm = real_vlm("llava")
    prompt = Encoder(vlm).prompt(_vqa(_portrait(*size)))
    assert int((prompt["input_ids"] == 32000).sum()) == 576  # (336 / 14)² patches, CLIP's class token dropped
    assert tuple(prompt["pixel_values"].shape) == (1, 3, 336, 336)


# (width, height) -> the grid Qwen2-VL's processor makes: both sides rounded to multiples of
# patch 14 x merge 2 = 28, scaled up to min_pixels 3136 or down to max_pixels if needed.
QWEN_GRIDS = {(32, 32): (1, 4, 4), (640, 480): (1, 34, 46), (1000, 800): (1, 58, 72)}


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_image_placeholders_follow_the_grid_and_max_pixels_caps_it(family, real_vlm, checkpoints):
    vlm = real_vlm(family)
    image_pad = vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    encoder = Encoder(vlm)
    for (width, height), grid in QWEN_GRIDS.items():
        prompt = encoder.prompt(_vqa(_portrait(width, height)))
        assert prompt["image_grid_thw"].tolist() == [list(grid)]
        t, h, w = grid
        assert int((prompt["input_ids"] == image_pad).sum()) == t * h * w // 2 ** 2  # merge_size 2
    assert vlm.adapter.image_max_pixels(vlm.processor) == 12845056

    capped = load_vlm(checkpoints(family), device="cpu", max_pixels=448 * 448)
    assert capped.adapter.image_max_pixels(capped.processor) == 448 * 448
    prompt = Encoder(capped).prompt(_vqa(_portrait(1000, 800)))
    t, h, w = prompt["image_grid_thw"][0].tolist()
    assert (h * 14) * (w * 14) <= 448 * 448 and (t, h, w) == (1, 28, 34)
    assert int((prompt["input_ids"] == image_pad).sum()) == h * w // 4
    with torch.no_grad():  # the tiny model of the real geometry takes the real processor's output
        assert capped.model(**Encoder(capped).batch([_vqa(_portrait(56, 56))], train=False)).logits.shape[1] > 4
    with pytest.raises(ValueError, match="below this checkpoint's smallest image"):
        load_vlm(checkpoints(family), device="cpu", max_pixels=1000)


def test_llava_refuses_max_pixels(checkpoints):
    with pytest.raises(ValueError, match="--max-pixels applies to Qwen2-VL and Qwen2.5-VL"):
        load_vlm(checkpoints("llava"), device="cpu", max_pixels=200704)
    with pytest.raises(ValueError, match="--max-pixels applies to Qwen2-VL"):
        adapter_for_family("llava").check_max_pixels(200704)


def test_llava_forward_on_a_real_processor_image(real_vlm):
    vlm = real_vlm("llava")
    batch = Encoder(vlm).batch([_vqa(_portrait(500, 300))], train=False)
    with torch.no_grad():
        assert vlm.model(**batch).logits.shape[:2] == batch["input_ids"].shape


def test_missing_fixture_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must install the test fixtures"):
        real.missing_fixture("thing", "npm ci")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="thing is not installed; .*npm ci"):
        real.missing_fixture("thing", "npm ci")


def test_an_answer_that_would_merge_into_the_prompt_is_spelt_after_the_prompts_tokens(real_vlm):
    """Qwen's prompt ends with "\\n"; an answer starting with newlines would merge with it into one
    token. The model continues the prompt's own tokens, so the answer's tokens are those of the
    answer alone, and prompt + answer still decode to the text."""
    vlm = real_vlm("qwen2-vl")
    encoder = Encoder(vlm)
    ids = encoder.answer_ids("\n\nParis")
    assert ids[-1] == IM_END and vlm.tokenizer.decode(ids[:-1]) == "\n\nParis"
    assert ids[:-1] == vlm.tokenizer("\n\nParis", add_special_tokens=False)["input_ids"]
