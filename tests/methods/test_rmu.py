"""RMU: the forget term at the entity's positions, layer as a fraction of depth, and that it forgets."""
import copy
from dataclasses import replace

import pytest
import torch

from mllm_unlearn.data.collate import IGNORE, Encoder
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.defaults import TINY_DEFAULTS
from mllm_unlearn.methods.rmu import entity_token_ids, forget_positions, resolve_layer, template_prefix_length
from mllm_unlearn.training.losses import model_inputs


def _marked(vlm, batch, mask, row):
    tokens = vlm.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][row].tolist())
    return [t for t, keep, real in zip(tokens, mask[row].tolist(), batch["attention_mask"][row].tolist()) if keep and real]


def test_forget_positions_are_the_entity_and_the_answer_not_the_shared_template(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    forget, retain = benchmark.forget_train[:40], benchmark.retain_train[:80]
    vqa = next(i for i in forget if i.modality == "vqa")
    qa = next(i for i in forget if i.modality == "qa")
    batch = encoder.batch([vqa, qa], train=True)
    image = vlm.model.config.image_token_id
    entity = forget_positions(batch, "entity", entity_ids=entity_token_ids(encoder, forget, retain, [image]))
    answer = forget_positions(batch, "answer")
    content = forget_positions(batch, "content", prefix=template_prefix_length(encoder, forget))
    tokenizer = vlm.processor.tokenizer
    name = [t for t in tokenizer.tokenize(qa.question) if t not in tokenizer.tokenize(vqa.question)]
    assert name  # the text-only question names the person; the VQA one says "this person"
    # Before the answer: the portrait's tokens (VQA) and the name pieces (QA), not the question wording.
    first_answer = answer.int().argmax(dim=1)
    prompt_part = entity & (torch.arange(entity.shape[1])[None, :] < first_answer[:, None])
    image_token = tokenizer.convert_ids_to_tokens(image)
    assert _marked(vlm, batch, prompt_part, 0) == [image_token] * int((batch["input_ids"][0] == image).sum())
    assert _marked(vlm, batch, prompt_part, 1) == name
    # Answer-predicting positions: the next token is an answer label.
    labels = batch["labels"]
    assert torch.equal(answer[:, :-1], labels[:, 1:] != IGNORE) and not answer[:, -1].any()
    assert (entity | answer).equal(entity)
    # content: everything after the template's shared prefix, up to the last answer-predicting position.
    assert content.sum() > entity.sum() and not content[:, -1].any() and (content | answer).equal(content)
    with pytest.raises(ValueError, match="positions must be one of"):
        forget_positions(batch, "nowhere")


def test_layer_is_an_index_or_a_fraction_of_the_depth():
    assert resolve_layer(0.25, 32) == 8 and resolve_layer(0.25, 4) == 1 and resolve_layer(0.25, 2) == 1
    assert resolve_layer(2, 4) == 2 and resolve_layer(0.99, 4) == 3
    with pytest.raises(ValueError, match="layer must be in"):
        resolve_layer(9, 4)
    with pytest.raises(ValueError, match="fraction of the depth"):
        resolve_layer(1.5, 4)


def _first_phrasings(items):
    """One question per (person, modality, fact): the world asks each fact four ways."""
    seen, kept = set(), []
    for item in items:
        if (item.person_id, item.modality, item.answer) not in seen:
            seen.add((item.person_id, item.modality, item.answer))
            kept.append(item)
    return kept


@pytest.fixture(scope="session")
def knowing_model(benchmark, words):
    """A tiny LLaVA that has learned every fact of the 2 forget people and 4 retain people."""
    from mllm_unlearn.models.tiny import build_tiny_vlm
    from mllm_unlearn.recipes import InjectionConfig, inject_knowledge
    from tests.conftest import SMALL_SIZE

    forget = _first_phrasings(benchmark.forget_train)
    retain_people = sorted({i.person_id for i in benchmark.retain_train})[:4]
    retain = _first_phrasings([i for i in benchmark.retain_train if i.person_id in retain_people])
    world = replace(benchmark, forget_train=forget, retain_train=retain, finetune_train=forget + retain,
                    pretrain_train=[])
    vlm = build_tiny_vlm("llava", words, SMALL_SIZE, seed=0)
    # Every epoch runs (no early stop at the probe's 90%): the test wants every fact known.
    inject_knowledge(vlm, world, InjectionConfig(skill_people=0, pretrain_epochs=0, finetune_epochs=25, lr=5e-3,
                                                 warmup_ratio=0.0, finetune_forms={"qa": 1}, learned_target=None,
                                                 modality_weights={"vqa": 1, "qa": 1}, identity_copies=0),
                     progress=False)
    return vlm, forget, retain


@torch.no_grad()
def _answers_known(vlm, items, edit=None) -> float:
    """Share of items whose whole answer the model predicts token by token (teacher-forced greedy)."""
    encoder = Encoder(vlm)
    batch = encoder.batch(items, train=True)
    if edit is not None:
        with edit.applied(vlm):
            logits = vlm.model(**model_inputs(batch)).logits
    else:
        logits = vlm.model(**model_inputs(batch)).logits
    labels = batch["labels"][:, 1:]
    right = (logits[:, :-1].argmax(-1) == labels) | (labels == IGNORE)
    return right.all(dim=1).float().mean().item()


def test_rmu_forgets_the_forget_people_and_keeps_the_retain_people(knowing_model):
    vlm, forget, retain = knowing_model
    assert _answers_known(vlm, forget) >= 0.9 and _answers_known(vlm, retain) >= 0.9
    # The hand-tuned tiny point (lr 2e-3, alpha 3, c 2; TINY_DEFAULTS, before the validation sweep's
    # values go over it): 8 epochs of a 400-item forget set are ~200 steps; this forget set has 20 items.
    cfg = replace(MethodConfig(**copy.deepcopy(TINY_DEFAULTS["rmu"])), epochs=20, progress=False)
    edit = get_method("rmu").unlearn(vlm, forget, retain, cfg)
    forgotten, kept = _answers_known(vlm, forget, edit), _answers_known(vlm, retain, edit)
    assert forgotten <= 0.3, f"forget answers still known: {forgotten:.2f}"
    assert kept >= 0.9 - 1e-6, f"retain answers lost: {kept:.2f}"  # float32 share: 18/20 is 0.8999999
