"""Relearning attack: seeded, no model copy, the caller's model restored bitwise, curve over steps."""
import pytest
import torch

from mllm_unlearn.eval.evaluator import EvalConfig, Evaluator
from mllm_unlearn.eval.relearn import (
    DEFAULT_LORA_RANK,
    FULL_FINETUNE_LR,
    LORA_LR,
    RelearnConfig,
    relearn_attack,
    resolve_relearn,
    split_forget_people,
)
from mllm_unlearn.interventions import WeightDelta
from mllm_unlearn.training.loop import LoraOptions
from mllm_unlearn.training.losses import sequence_nll


def _edit(vlm) -> WeightDelta:
    """A stand-in unlearning edit: the LM head pushed off its trained values."""
    name, param = next((n, p) for n, p in vlm.model.named_parameters() if n.endswith("lm_head.weight"))
    generator = torch.Generator().manual_seed(1)
    return WeightDelta({name: param.detach() + 0.5 * torch.randn(param.shape, generator=generator)})


def test_relearning_is_seeded_and_leaves_the_callers_model_unchanged(tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    edit = _edit(vlm)
    cfg = RelearnConfig(steps=4, eval_every=2, lr=1e-3, batch_size=4, fraction=0.5)
    first = relearn_attack(vlm, benchmark, edit, cfg)
    after = vlm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in vlm.model.parameters())
    assert not vlm.model._forward_pre_hooks and not any(m._forward_pre_hooks for m in vlm.model.modules())

    second = relearn_attack(vlm, benchmark, edit, cfg)
    assert first == second  # same seed, same curve
    assert first["steps"] == [0, 2, 4] and len(first["forget_accuracy"]) == 3 and len(first["retain_accuracy"]) == 3
    assert len(first["train_losses"]) == 4
    shown, measured = split_forget_people(benchmark, cfg)
    assert first["people"] == {"shown": shown, "measured": measured} and not set(shown) & set(measured)

    # Step 0 is the unlearned model itself, on the forget people the attack never shows.
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq" and i.person_id in measured]
    with edit.applied(vlm):
        records = Evaluator(vlm, EvalConfig(progress=False)).score_group([i for i in items if i.modality == "qa"], "mcq")
    assert first["counts"]["forget_qa"] == len(records)
    assert first["forget_accuracy"][0]["qa"] == 100.0 * sum(r["correct"] for r in records) / len(records)
    # The positive control: the forget people the attack trains on, measured on their own questions.
    trained = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq" and i.person_id in shown]
    with edit.applied(vlm):
        records = Evaluator(vlm, EvalConfig(progress=False)).score_group([i for i in trained if i.modality == "vqa"], "mcq")
    assert len(first["shown_accuracy"]) == 3 and first["counts"]["shown_vqa"] == len(records)
    assert first["shown_accuracy"][0]["vqa"] == 100.0 * sum(r["correct"] for r in records) / len(records)

    other = relearn_attack(vlm, benchmark, edit, RelearnConfig(**{**cfg.__dict__, "seed": 1, "steps": 2}))
    assert other["train_losses"] != first["train_losses"][:2]


def test_training_moves_the_copy(tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    result = relearn_attack(vlm, benchmark, None, RelearnConfig(steps=6, eval_every=3, lr=3e-3, batch_size=8,
                                                                max_eval_items=4, fraction=0.5))
    assert result["train_losses"][-1] < result["train_losses"][0]  # the attack's fine-tuning learns


def test_a_steering_edit_is_attacked_applied_as_hooks_on_the_copy(tiny_vlm, benchmark):
    from mllm_unlearn.interventions.steering import Steering

    vlm = tiny_vlm("llava")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    width = vlm.model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(0)
    edit = Steering({0: torch.randn(width, width, generator=generator) / width ** 0.5}, 3.0)
    cfg = RelearnConfig(steps=2, eval_every=1, lr=1e-3, batch_size=4, fraction=0.5)
    result = relearn_attack(vlm, benchmark, edit, cfg)
    assert result["edit_mode"] == "applied as hooks" and result["steps"] == [0, 1, 2]
    # Step 0 is the steered model: it differs from the same attack on the unsteered model.
    plain = relearn_attack(vlm, benchmark, None, cfg)
    assert plain["edit_mode"] is None and plain["train_losses"] != result["train_losses"]
    assert all(torch.equal(before[k], v) for k, v in vlm.model.state_dict().items())
    # (transformers itself adds output-capturing hooks to the vision tower on a first forward)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vlm.adapter.lm_layers(vlm.model).modules())


def test_attack_data_adds_multiple_choice_versions_of_the_shown_items(tiny_vlm, benchmark):
    import pytest

    vlm = tiny_vlm("llava")
    cfg = RelearnConfig(steps=1, eval_every=1, batch_size=4, fraction=0.5, max_eval_items=2)
    shown, _ = split_forget_people(benchmark, cfg)
    items = [i for i in benchmark.forget_train if i.person_id in shown]
    from mllm_unlearn.recipes.inject import McqRenderer

    renderer = McqRenderer(list(benchmark.forget_train) + list(benchmark.retain_train), 0)
    renderable = [i for i in items if renderer.renderable(i)]
    assert renderable  # the built-in world's training items carry their attribute
    with_mcq = relearn_attack(vlm, benchmark, None, cfg)
    plain = relearn_attack(vlm, benchmark, None, RelearnConfig(**{**cfg.__dict__, "mcq_renderings": 0}))
    assert plain["counts"]["train_items"] == len(items)
    assert with_mcq["counts"]["train_items"] == len(items) + cfg.mcq_renderings * len(renderable)
    with pytest.raises(ValueError, match="mcq_renderings must be >= 0"):
        RelearnConfig(mcq_renderings=-1)


def _forbid_model_copies(monkeypatch):
    """Make ``copy.deepcopy`` of any torch module fail loudly (and record the attempt)."""
    import copy

    real = copy.deepcopy
    copied = []

    def guarded(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            copied.append(type(obj).__name__)
            raise AssertionError(f"the relearning attack deep-copied a {type(obj).__name__}")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", guarded)
    return copied


def _composite_edit(vlm):
    """A weight change plus pruned neurons (what MIP-Editor returns): baking writes both."""
    from mllm_unlearn.interventions import CompositeEdit, NeuronMask

    down = next(n for n, m in vlm.model.named_modules() if n.endswith("language_model.layers.0.mlp.down_proj"))
    return CompositeEdit([NeuronMask({down: [0, 3, 5]}), _edit(vlm)])


@pytest.mark.parametrize("lora", [None, LoraOptions(r=4, alpha=4)], ids=["full", "lora"])
def test_the_attack_copies_no_model_and_restores_it_bitwise(tiny_vlm, benchmark, monkeypatch, lora):
    vlm = tiny_vlm("llava")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    edit = _composite_edit(vlm)
    copied = _forbid_model_copies(monkeypatch)
    cfg = RelearnConfig(steps=4, eval_every=2, lr=3e-3, batch_size=4, fraction=0.5, max_eval_items=4, lora=lora)
    result = relearn_attack(vlm, benchmark, edit, cfg)
    assert not copied
    after = vlm.model.state_dict()
    assert set(after) == set(before)  # no adapter left behind
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in vlm.model.named_modules())
    assert all(p.requires_grad for p in vlm.model.parameters())
    assert result["train_losses"][-1] < result["train_losses"][0]  # the attack learns either way
    assert result["fine_tuning"] == ("full" if lora is None else "LoRA rank 4")
    # baked, as released weights would be (pruned neurons can regrow), not held off by hooks
    assert result["edit_mode"] == "baked"
    assert not any(m._forward_pre_hooks for m in vlm.adapter.lm_layers(vlm.model).modules())
    assert result["config"]["lr"] == 3e-3


def test_a_failing_attack_still_restores_the_model(tiny_vlm, benchmark, monkeypatch):
    import mllm_unlearn.eval.relearn as relearn

    vlm = tiny_vlm("llava")
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    edit = _edit(vlm)
    calls = []

    def sequence_nll_then_oom(model, batch):  # one step trains, the second runs out of memory
        calls.append(1)
        if len(calls) > 1:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return sequence_nll(model, batch)

    monkeypatch.setattr(relearn, "sequence_nll", sequence_nll_then_oom)
    with pytest.raises(torch.OutOfMemoryError):
        relearn_attack(vlm, benchmark, edit, RelearnConfig(steps=3, eval_every=3, batch_size=4, fraction=0.5,
                                                           max_eval_items=2))
    assert all(torch.equal(before[k], v) for k, v in vlm.model.state_dict().items())


def test_auto_settings_resolve_by_who_built_the_model():
    built = resolve_relearn(RelearnConfig(lora="auto"), model_built_here=True)
    assert built.lora is None and built.lr == FULL_FINETUNE_LR == 1e-3  # the tiny figures' attack
    other = resolve_relearn(RelearnConfig(lora="auto"), model_built_here=False)
    assert other.lora == LoraOptions(r=DEFAULT_LORA_RANK, alpha=DEFAULT_LORA_RANK) and other.lr == LORA_LR
    given = resolve_relearn(RelearnConfig(lora=LoraOptions(r=8), lr=5e-4), model_built_here=False)
    assert given.lora.r == 8 and given.lr == 5e-4
    with pytest.raises(ValueError, match="relearn lora"):
        RelearnConfig(lora="rank8")
