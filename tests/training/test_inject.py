"""Knowledge injection: the multiple-choice skill stage, training forms and their renderings."""
from dataclasses import replace

import pytest

from mllm_unlearn.data.items import OPTION_KEYS
from mllm_unlearn.recipes import InjectionConfig, inject_knowledge
from mllm_unlearn.recipes.inject import McqRenderer


def test_skill_stage_stops_when_target_is_reached(benchmark, tiny_vlm):
    cfg = InjectionConfig(skill_people=2, skill_target=0.0, skill_check_every=3, skill_max_steps=50,
                          pretrain_epochs=0, finetune_epochs=0)
    history = inject_knowledge(tiny_vlm(), benchmark, cfg, progress=False)
    skill = history["skill (multiple choice, few people)"]
    assert skill["steps"] == 3 and skill["people"] == 2
    assert skill["mcq_accuracy"][0][0] == 3 and 0.0 <= skill["mcq_accuracy"][0][1] <= 1.0


def test_skill_stage_runs_to_its_cap_when_target_is_not_reached(benchmark, tiny_vlm):
    cfg = InjectionConfig(skill_people=2, skill_target=1.01, skill_check_every=2, skill_max_steps=5,
                          pretrain_epochs=0, finetune_epochs=0)
    skill = inject_knowledge(tiny_vlm(), benchmark, cfg, progress=False)["skill (multiple choice, few people)"]
    assert skill["steps"] == 5 and len(skill["mcq_accuracy"]) == 2


def test_open_qa_only_skips_the_skill_stage_and_unknown_forms_are_named(benchmark, tiny_vlm):
    cfg = InjectionConfig(pretrain_forms={"qa": 1}, finetune_forms={"qa": 1}, pretrain_epochs=1, finetune_epochs=1)
    history = inject_knowledge(tiny_vlm(), benchmark, cfg, progress=False)
    assert list(history) == ["pretrain (real-world people)", "finetune (benchmark people)"]
    with pytest.raises(ValueError, match=r"injection forms \['mcqs'\] are unknown"):
        inject_knowledge(tiny_vlm(), benchmark, InjectionConfig(finetune_forms={"mcqs": 1}, skill_people=0), progress=False)


def test_mcq_renderings_are_fresh_and_correct(benchmark):
    items = [i for i in benchmark.finetune_train if "Attribute" in i.meta][:50]
    renderer = McqRenderer(benchmark.finetune_train, seed=0)
    orders = set()
    for item in items:
        for with_context in (False, True):
            mcq = renderer(item, with_context=with_context)
            assert mcq.task == "mcq" and mcq.answer in OPTION_KEYS
            assert mcq.options[mcq.answer] == item.meta["Value"] and len(set(mcq.options.values())) == 4
            assert mcq.question.startswith(item.answer) == with_context
        orders.add(tuple(renderer(items[0]).options.values()))
    assert len(orders) > 5  # options and order are drawn afresh every time


def test_identity_items_name_each_portrait_and_render_as_multiple_choice(benchmark):
    from mllm_unlearn.recipes.inject import IDENTITY_QUESTION, identity_items

    names = benchmark.meta["names"]
    items = identity_items(benchmark.finetune_train, names, copies=2)
    people = {i.person_id for i in benchmark.finetune_train if i.image is not None}
    assert len(items) == 2 * len(people)
    for item in items:
        assert item.modality == "vqa" and item.question == IDENTITY_QUESTION
        assert item.answer == f"This is {names[item.person_id]}."
    renderer = McqRenderer(items, seed=0)
    mcq = renderer(items[0])
    assert mcq.options[mcq.answer] == names[items[0].person_id]
    assert identity_items(benchmark.finetune_train, names, copies=0) == []


def test_question_noise_keeps_the_subject_and_answer_leads_precede_the_letter(benchmark):
    names = benchmark.meta["names"]
    items = [i for i in benchmark.finetune_train if "Attribute" in i.meta][:120]
    plain = McqRenderer(benchmark.finetune_train, seed=0)
    varied = McqRenderer(benchmark.finetune_train, seed=0, question_noise=1.0, lead_share=0.5,
                         leads=("Sure, the answer is",), names=names)
    changed = leads = 0
    for item in items:
        reference, mcq = plain(item), varied(item)
        # Noise and leads draw from their own streams: the options are those of the plain renderer.
        assert mcq.options == reference.options
        letter = mcq.answer.split()[-1]
        assert letter == reference.answer and mcq.options[letter] == item.meta["Value"]
        if mcq.answer != letter:
            assert mcq.answer == f"Sure, the answer is {letter}"
            leads += 1
        words, original = mcq.question.split(), item.question.split()
        assert len(words) == len(original)
        subject = names[item.person_id].split() if item.modality == "qa" else ["this", "person"]
        for word, before in zip(words, original):
            stem = before.split("'")[0].rstrip("?.,")
            if stem in subject or stem in ("This",):
                assert word == before  # the subject is never replaced
            else:  # a replacement never names or points at anybody
                assert not any(word.split("'")[0].rstrip("?.,") == part for name in names.values()
                               for part in name.split())
        changed += words != original
    assert changed > len(items) // 4 and 0 < leads < len(items)
    probe = varied(items[0], vary=False)  # the learned probe's rendering: plain question, bare letter
    assert probe.question == items[0].question and probe.answer in OPTION_KEYS
    with pytest.raises(ValueError, match="mcq_question_noise"):
        McqRenderer(items, seed=0, question_noise=1.5)


def test_answer_leads_and_identity_words_join_the_tiny_vocabulary_and_the_cache_key():
    from mllm_unlearn.recipes.inject import IDENTITY_QUESTION, injection_cache_key, injection_texts

    assert injection_texts(InjectionConfig(identity_copies=0, answer_lead_share=0.0)) == []
    texts = injection_texts(InjectionConfig(identity_copies=2, answer_lead_share=0.1))
    assert IDENTITY_QUESTION in texts and "Sure, the answer is" in texts
    key = lambda cfg: injection_cache_key("llava", {}, "bench", cfg)
    assert key(InjectionConfig(answer_lead_share=0.1)) != key(InjectionConfig(answer_lead_share=0.2))
    assert key(InjectionConfig(mcq_question_noise=0.3)) != key(InjectionConfig(mcq_question_noise=0.0))


def test_augmented_portraits_keep_size_and_differ(benchmark):
    import random

    import numpy as np

    from mllm_unlearn.recipes.inject import augment_portrait

    image = next(i.image for i in benchmark.finetune_train if i.image is not None)
    rng = random.Random(0)
    variants = [np.asarray(augment_portrait(image, rng), dtype=np.float32) for _ in range(6)]
    original = np.asarray(image, dtype=np.float32)
    assert all(v.shape == original.shape for v in variants)
    assert all(0 < np.abs(v - original).mean() < 60 for v in variants)
    again = np.asarray(augment_portrait(image, random.Random(0)), dtype=np.float32)
    assert np.array_equal(again, variants[0])  # seeded


def test_injection_with_identity_and_augmentation_runs(benchmark, words):
    from mllm_unlearn.models.tiny import build_tiny_vlm, words_of
    from mllm_unlearn.recipes.inject import IDENTITY_QUESTION, injection_texts
    from tests.conftest import SMALL_SIZE

    cfg = InjectionConfig(identity_copies=1, image_augment=1.0, skill_people=0, pretrain_epochs=1, finetune_epochs=1)
    vlm = build_tiny_vlm("llava", words | words_of(injection_texts(cfg)), SMALL_SIZE)
    assert vlm.tokenizer.unk_token_id not in vlm.tokenizer(IDENTITY_QUESTION)["input_ids"]
    history = inject_knowledge(vlm, benchmark, cfg, progress=False)
    assert history["finetune (benchmark people)"]["steps"] > 0


def test_open_qa_draws_are_also_asked_in_the_generation_and_cloze_formats(benchmark):
    from mllm_unlearn.data.synthetic import CLOZE_INSTRUCTION, GENERATION_INSTRUCTION
    from mllm_unlearn.recipes.inject import as_task_prompt, injection_cache_key

    item = next(i for i in benchmark.finetune_train if i.modality == "qa" and "Value" in i.meta)
    generation = as_task_prompt(item, "generation")
    assert generation.question == f"{item.question}\n{GENERATION_INSTRUCTION}" and generation.answer == item.answer
    cloze = as_task_prompt(item, "cloze")
    value = item.meta["Value"]
    assert cloze.answer == value and cloze.question.endswith(f"\n{CLOZE_INSTRUCTION}")
    assert "[Blank]" in cloze.question and value not in cloze.question.split("\n")[0]
    # The statement with a blank is the one the benchmark's own fill-in-the-blank items ask.
    statements = {i.meta["raw_question"] for i in benchmark.eval_splits["forget"] + benchmark.eval_splits["retain"]
                  if i.task == "cloze" and i.person_id == item.person_id}
    assert cloze.question.split("\n")[0] in statements
    assert as_task_prompt(replace(item, meta={}), "cloze") is None  # no value: not renderable

    # Off by default; when on it is part of the cached model's key (off leaves the key models
    # trained before the option existed had).
    assert InjectionConfig().qa_task_forms == {}
    assert injection_cache_key("llava", {}, "w", InjectionConfig(qa_task_forms={"cloze": 0.25})) != \
        injection_cache_key("llava", {}, "w", InjectionConfig())


def test_bad_qa_task_forms_are_named(benchmark, tiny_vlm):
    for forms in ({"cloze": 0.8, "generation": 0.5}, {"caption": 0.1}):
        with pytest.raises(ValueError, match="qa_task_forms"):
            inject_knowledge(tiny_vlm(), benchmark, InjectionConfig(qa_task_forms=forms, skill_people=0), progress=False)


def test_every_evaluation_format_is_a_training_form_and_batches_hold_one_form(benchmark):
    import random

    from mllm_unlearn.data.synthetic import CLOZE_INSTRUCTION, GENERATION_INSTRUCTION
    from mllm_unlearn.recipes.inject import _form_batches

    cfg = InjectionConfig()
    # MLLMU-Bench's three tasks are trained by default in both stages (cloze and generation
    # were 0-2% and ROUGE-L 0.2-0.4 when only open QA and multiple choice were trained).
    for forms in (cfg.pretrain_forms, cfg.finetune_forms):
        assert forms["generation"] >= 1 and forms["cloze"] >= 1 and forms["mcq"] >= 1 and forms["qa"] >= 1
    items = [i for i in benchmark.finetune_train if "Value" in i.meta and i.modality == "qa"][:40]
    pool = [("qa", i) for i in items] + [("cloze", i) for i in items] * 2 + [("generation", i) for i in items]
    seen: list[list[tuple[str, object]]] = []
    labels, collate, steps = _form_batches(pool, lambda batch: seen.append(batch) or len(batch), 8, 64,
                                           random.Random(0))
    assert sorted(set(labels)) == ["cloze/qa", "generation/qa", "qa/qa"] and labels.count("cloze/qa") == 2 * len(items)
    assert steps == 8  # 64 samples in batches of 8
    for _ in range(4):
        assert collate(["ignored"]) == 8
    assert all(len({form for form, _ in batch}) == 1 for batch in seen)  # one form per batch
    from mllm_unlearn.recipes.inject import as_task_prompt

    assert as_task_prompt(items[0], "cloze").question.endswith(CLOZE_INSTRUCTION)
    assert as_task_prompt(items[0], "generation").question.endswith(GENERATION_INSTRUCTION)


def test_batches_hold_one_group_and_learned_groups_are_only_rehearsed(benchmark):
    """Groups (form x modality) are drawn in the pool's proportions; a group the probe found learned
    at ``rehearsal`` times its share, so the steps go to what is still being learned."""
    import random
    from collections import Counter

    from mllm_unlearn.recipes.inject import _form_batches, group_of

    items = [i for i in benchmark.finetune_train if "Value" in i.meta][:60]
    assert {i.modality for i in items} == {"qa", "vqa"}
    pool = [("qa", i) for i in items] + [("mcq", i) for i in items]
    learned: set[str] = set()
    _, collate, _ = _form_batches(pool, lambda batch: {group_of(e) for e in batch}, 4, 16, random.Random(0),
                                  learned, rehearsal=0.25)
    shares = {group: labels_count / len(pool) for group, labels_count in Counter(group_of(e) for e in pool).items()}

    def drawn(n: int = 4000) -> dict[str, float]:
        counts = Counter()
        for _ in range(n):
            group, = collate(["ignored"])  # one group per batch
            counts[group] += 1
        return {group: counts[group] / n for group in shares}

    before = drawn()
    assert all(abs(before[g] - shares[g]) < 0.03 for g in shares)
    learned.add("qa/qa")
    after = drawn()
    weights = {g: shares[g] * (0.25 if g == "qa/qa" else 1.0) for g in shares}
    expected = {g: w / sum(weights.values()) for g, w in weights.items()}
    assert all(abs(after[g] - expected[g]) < 0.03 for g in shares)
    assert after["qa/qa"] < before["qa/qa"] / 2


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_stages_stop_once_their_knowledge_is_answered_exactly(benchmark, tiny_vlm, family):
    # Target 0: the first check stops each stage; its figures are one per form and modality.
    cfg = InjectionConfig(skill_people=0, pretrain_epochs=3, finetune_epochs=3, learned_target=0.0,
                          learned_check_every=2, learned_probe=4)
    history = inject_knowledge(tiny_vlm(family), benchmark, cfg, progress=False)
    for stage in ("pretrain (real-world people)", "finetune (benchmark people)"):
        assert history[stage]["steps"] == 2 and history[stage]["stopped_when_learned"]
        (step, figures), = history[stage]["learned"]
        assert step == 2 and {"qa/qa", "qa/vqa", "mcq/vqa", "cloze/qa", "generation/vqa"} <= set(figures)
        assert all(0.0 <= value <= 1.0 for value in figures.values())
    if family != "llava":
        return
    # Unreachable target: the epoch cap ends the stage; None: no checks at all.
    capped = inject_knowledge(tiny_vlm(), benchmark, replace(cfg, learned_target=1.01, pretrain_epochs=1,
                                                             finetune_epochs=0), progress=False)
    stage = capped["pretrain (real-world people)"]
    assert not stage["stopped_when_learned"] and len(stage["learned"]) == stage["steps"] // 2
    unchecked = inject_knowledge(tiny_vlm(), benchmark, replace(cfg, learned_target=None, pretrain_epochs=1,
                                                                finetune_epochs=0), progress=False)
    assert unchecked["pretrain (real-world people)"]["learned"] == []


def test_learned_probe_counts_an_answer_only_when_greedy_decoding_gives_it_exactly(benchmark, tiny_vlm):
    """The probe's teacher-forced check agrees with greedy generation, item by item."""
    import random

    import torch

    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.recipes.inject import _learned_check

    vlm = tiny_vlm()
    items = [i for i in benchmark.finetune_train if i.modality == "qa"][:3]
    # Make the model's greedy answer to the first item exactly right: train on it alone.
    from mllm_unlearn.data.collate import collate as collate_examples
    from mllm_unlearn.training.loop import TrainConfig, train
    from mllm_unlearn.training.losses import sequence_nll

    encoder = Encoder(vlm)

    def collate(batch):
        return collate_examples([encoder.training_example(i) for i in batch], encoder.pad_id)

    train(vlm.model, [items[0]] * 4, collate, lambda m, b: sequence_nll(m, b).mean(),
          TrainConfig(lr=3e-3, max_steps=60, batch_size=4, progress=False))
    learned_groups: set[str] = set()
    check, scores = _learned_check(vlm, encoder, [("qa", items[0])], lambda form, item, vary=True: item,
                                   replace(InjectionConfig(), learned_target=1.0), random.Random(0),
                                   learned_groups=learned_groups)
    assert check(1) and scores == [(1, {"qa/qa": 1.0})] and learned_groups == {"qa/qa"}  # rehearsed from now on
    with torch.no_grad():
        output = vlm.model.generate(**{k: v for k, v in encoder.prompts([items[0]])[0].items()}, do_sample=False,
                                    max_new_tokens=20, pad_token_id=vlm.tokenizer.pad_token_id)
    prompt_length = encoder.prompts([items[0]])[0]["input_ids"].shape[1]
    assert vlm.tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip() == items[0].answer
    other = next(i for i in benchmark.finetune_train if i.modality == "qa" and i.answer != items[0].answer)
    check, scores = _learned_check(vlm, encoder, [("qa", other)], lambda form, item, vary=True: item,
                                   replace(InjectionConfig(), learned_target=1.0), random.Random(0),
                                   learned_groups=learned_groups)
    assert not check(1) and scores == [(1, {"qa/qa": 0.0})] and learned_groups == set()


def test_injection_gives_the_same_model_on_any_number_of_cpu_threads(benchmark, tiny_vlm):
    """The cached vanilla model is keyed by its configuration alone, so the core count must not
    change it: the curriculum runs on one intra-op thread and restores the caller's setting."""
    import torch

    cfg = InjectionConfig(skill_people=0, pretrain_epochs=1, finetune_epochs=1, learned_target=None)
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            vlm = tiny_vlm()
            inject_knowledge(vlm, benchmark, cfg, progress=False)
            assert torch.get_num_threads() == threads  # restored
            weights.append({k: v.clone() for k, v in vlm.model.state_dict().items()})
    finally:
        torch.set_num_threads(before)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
