"""Memory savings that must not change results: answer-only logits, gradient checkpointing,
forwards stopped at the loss layer with a truncated reference, token-bounded batches.

"Before" is the previous code path, restored by monkeypatching: logits over every position
then selected, the full forward with a hook at the loss layer, a full frozen copy, no
checkpointing."""
from __future__ import annotations

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import frozen_copy
from mllm_unlearn.training import losses
from mllm_unlearn.training.batching import batch_parts, item_batch_parts, split_by_tokens, token_lengths
from mllm_unlearn.training.loop import _set_checkpointing
from mllm_unlearn.training.truncated import hidden_at_layer, truncated_reference

FAMILIES = ("llava", "qwen2-vl", "qwen2.5-vl")


def _full_logits_answer_logits(model, batch, where=None):
    """The previous path: the LM head over all B·T positions, the answer rows picked afterwards."""
    where = losses.predicting_mask(batch["labels"]) if where is None else where
    return model(**losses.model_inputs(batch)).logits[where]


def _full_forward_hidden(model, adapter, layer, batch):
    """The previous path: a full forward, layer ``layer``'s output taken by a hook."""
    captured = {}
    block = adapter.lm_layers(model)[layer]
    handle = block.register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out))
    try:
        model(**losses.model_inputs(batch))
    finally:
        handle.remove()
    return captured["h"]


def _use_previous_paths(patch) -> None:
    """Switch the code back to the memory-hungry paths this module compares against."""
    import mllm_unlearn.methods.kl as kl
    import mllm_unlearn.methods.rmu as rmu

    patch.setattr(losses, "answer_logits", _full_logits_answer_logits)
    patch.setattr(kl, "answer_logits", _full_logits_answer_logits)
    patch.setattr(rmu, "hidden_at_layer", _full_forward_hidden)
    patch.setattr(rmu, "truncated_reference", lambda model, adapter, layer: frozen_copy(model))


def _batch(vlm, items):
    return Encoder(vlm).batch(list(items), train=True)


def _mixed(benchmark, n=6):
    vqa = [i for i in benchmark.forget_train if i.modality == "vqa"][: n // 2]
    qa = [i for i in benchmark.forget_train if i.modality == "qa"][: n - n // 2]
    return vqa + qa  # different prompt lengths: left padding, ragged answers


# --- answer-only logits ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_answer_only_token_nll_equals_full_logits(benchmark, tiny_vlm, family):
    vlm = tiny_vlm(family)
    batch = _batch(vlm, _mixed(benchmark))
    with torch.no_grad():
        full, full_mask = losses.token_nll(vlm.model(**losses.model_inputs(batch)).logits, batch["labels"])
        nll, mask = losses.answer_token_nll(vlm.model, batch)
        logits = losses.answer_logits(vlm.model, batch)
    assert torch.equal(mask, full_mask)
    torch.testing.assert_close(nll, full, rtol=1e-5, atol=1e-6)
    assert logits.shape == (int(mask.sum()), vlm.model.config.get_text_config().vocab_size)  # N rows, not B·T


def test_answer_kl_on_answer_rows_equals_full_logits(benchmark, tiny_vlm):
    vlm, other = tiny_vlm("qwen2-vl"), tiny_vlm("qwen2-vl", seed=1)
    batch = _batch(vlm, _mixed(benchmark))
    with torch.no_grad():
        full = losses.answer_kl(other.model(**losses.model_inputs(batch)).logits,
                                vlm.model(**losses.model_inputs(batch)).logits, batch["labels"])
        where = losses.predicting_mask(batch["labels"])
        rows = losses.answer_kl(losses.answer_logits(other.model, batch, where), losses.answer_logits(vlm.model, batch, where),
                                batch["labels"])
    assert full.min() > 0
    torch.testing.assert_close(rows, full, rtol=1e-5, atol=1e-7)


# --- the truncated forward and reference ----------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_forward_stopped_at_a_layer_and_truncated_reference_give_that_layers_states(benchmark, tiny_vlm, family):
    vlm = tiny_vlm(family)
    batch = _batch(vlm, _mixed(benchmark))
    names = [n for n, _ in vlm.model.named_parameters()]
    with torch.no_grad():
        full = _full_forward_hidden(vlm.model, vlm.adapter, 0, batch)
        stopped = hidden_at_layer(vlm.model, vlm.adapter, 0, batch)
        reference = truncated_reference(vlm.model, vlm.adapter, 0)
        from_reference = hidden_at_layer(reference, vlm.adapter, 0, batch)
    torch.testing.assert_close(stopped, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_reference, full, rtol=1e-5, atol=1e-6)
    assert [n for n, _ in vlm.model.named_parameters()] == names  # the model keeps all its layers
    assert len(vlm.adapter.lm_layers(reference)) == 1
    reference_names = {n for n, _ in reference.named_parameters()}
    assert not any(".layers.1." in n and "language_model" in n for n in reference_names)
    assert not any(n.startswith("lm_head") for n in reference_names)  # no output head copied
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training


# --- gradient checkpointing --------------------------------------------------------------------

def test_checkpointing_is_on_while_training_and_off_afterwards(benchmark, tiny_vlm):
    from mllm_unlearn.training.loop import TrainConfig, train

    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    seen = []

    def loss_fn(model, batch):
        seen.append(any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))
        return losses.sequence_nll(model, batch).mean()

    train(vlm.model, list(benchmark.forget_train[:4]), lambda items: encoder.batch(items, train=True), loss_fn,
          TrainConfig(max_steps=2, batch_size=2, progress=False, gradient_checkpointing=True))
    assert seen == [True, True]
    assert not any(getattr(m, "gradient_checkpointing", False) for m in vlm.model.modules())
    assert not getattr(vlm.model, "_require_grads_hooks", None)  # no embedding hook left behind

    def failing(model, batch):
        raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        train(vlm.model, list(benchmark.forget_train[:4]), lambda items: encoder.batch(items, train=True), failing,
              TrainConfig(max_steps=1, batch_size=2, progress=False, gradient_checkpointing=True))
    assert not any(getattr(m, "gradient_checkpointing", False) for m in vlm.model.modules())


def _saved_bytes(model, loss_fn) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (parameters excluded), one loss+backward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_activation_bytes_fall(benchmark, tiny_vlm, family):
    vlm = tiny_vlm(family)
    model = vlm.model.train()
    batch = _batch(vlm, _mixed(benchmark))
    retain = _batch(vlm, [i for i in benchmark.retain_train if i.modality == "vqa"][:6])
    reference = frozen_copy(model)

    def full_nll():  # the previous sequence_nll: logits at every position
        nll, mask = losses.token_nll(model(**losses.model_inputs(batch)).logits, batch["labels"])
        return (nll.sum(dim=1) / mask.sum(dim=1)).mean()

    def full_kl():
        logits = model(**losses.model_inputs(retain)).logits
        with torch.no_grad():
            reference_logits = reference(**losses.model_inputs(retain)).logits
        return losses.answer_kl(reference_logits, logits, retain["labels"]).mean()

    def answer_only_kl():
        where = losses.predicting_mask(retain["labels"])
        logits = losses.answer_logits(model, retain, where)
        with torch.no_grad():
            reference_logits = losses.answer_logits(reference, retain, where)
        return losses.answer_kl(reference_logits, logits, retain["labels"]).mean()

    before = {"nll": _saved_bytes(model, full_nll), "kl": _saved_bytes(model, full_kl),
              "rmu": _saved_bytes(model, lambda: _full_forward_hidden(model, vlm.adapter, 0, batch).pow(2).mean())}
    answer_only = {"nll": _saved_bytes(model, lambda: losses.sequence_nll(model, batch).mean()),
                   "kl": _saved_bytes(model, answer_only_kl),
                   "rmu": _saved_bytes(model, lambda: hidden_at_layer(model, vlm.adapter, 0, batch).pow(2).mean())}
    _set_checkpointing(model, True)
    try:
        checkpointed = {"nll": _saved_bytes(model, lambda: losses.sequence_nll(model, batch).mean()),
                        "kl": _saved_bytes(model, answer_only_kl)}
    finally:
        _set_checkpointing(model, False)
    for key in before:
        assert answer_only[key] < before[key], (key, before, answer_only)
    for key in checkpointed:
        assert checkpointed[key] < answer_only[key], (key, answer_only, checkpointed)


# --- methods: same losses and edits as before -------------------------------------------------------

def _edited_state(vlm, edit):
    # Baked into a copy: a LoRA edit (its factors) and a neuron mask act through hooks, not on the weights.
    import copy
    from dataclasses import replace

    edited = replace(vlm, model=copy.deepcopy(vlm.model))
    edit.bake(edited)
    return {k: v.detach().clone() for k, v in edited.model.state_dict().items()}


def _unlearn(name, benchmark, vlm, extra, checkpointing):
    from mllm_unlearn.training.loop import LoraOptions

    extra = dict(extra)
    lora = LoraOptions(r=2, alpha=4) if extra.pop("lora", False) else None
    cfg = MethodConfig(max_steps=2, batch_size=4, lr=1e-3, progress=False, extra=extra, lora=lora,
                       gradient_checkpointing=checkpointing)
    forget = list(benchmark.forget_train[:8])
    return get_method(name).unlearn(vlm, forget, list(benchmark.retain_train[:8]), cfg)


CASES = [("ga", {}, "llava"), ("graddiff", {}, "llava"), ("kl", {}, "llava"), ("npo", {}, "llava"),
         ("rmu", {"layer": 0}, "llava"), ("mmunlearner", {}, "llava"),
         ("mip-editor", {"layer": 0, "path_batch_size": 2}, "llava"),
         ("ga", {}, "qwen2-vl"), ("rmu", {"layer": 0}, "qwen2-vl"),
         ("kl", {}, "qwen2.5-vl"), ("mip-editor", {"layer": 0, "paths": "text"}, "qwen2.5-vl"),
         ("graddiff", {"lora": True}, "llava"), ("mmunlearner", {"lora": True}, "qwen2-vl")]


@pytest.mark.parametrize("name,extra,family", CASES, ids=[f"{n}-{f}{'-lora' if e.get('lora') else ''}" for n, e, f in CASES])
def test_methods_give_the_same_losses_and_edits_as_before(benchmark, tiny_vlm, monkeypatch, name, extra, family):
    vlm = tiny_vlm(family)
    with monkeypatch.context() as patch:
        _use_previous_paths(patch)
        old = _unlearn(name, benchmark, vlm, extra, checkpointing=False)
    new = _unlearn(name, benchmark, vlm, extra, checkpointing=True)
    assert len(new.meta["losses"]) == 2
    torch.testing.assert_close(torch.tensor(new.meta["losses"]), torch.tensor(old.meta["losses"]), rtol=1e-5, atol=1e-7)
    old_state, new_state = _edited_state(vlm, old), _edited_state(vlm, new)
    changed = [k for k in old_state if not torch.equal(old_state[k], vlm.model.state_dict()[k])]
    assert changed, "the edit changed nothing: the comparison would be empty"
    for key in old_state:
        torch.testing.assert_close(new_state[key], old_state[key], rtol=1e-5, atol=1e-7, msg=lambda m: f"{key}: {m}")


# --- token-bounded batches ------------------------------------------------------------------------

def test_split_by_tokens_bounds_the_padded_size_and_keeps_order():
    lengths = [5, 3, 9, 2, 2, 2, 20, 4]
    groups = split_by_tokens(lengths, 12)
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) * longest <= 12 or len(group) == 1  # an item over the budget stands alone
    assert groups == [[0, 1], [2], [3, 4, 5], [6], [7]]
    assert split_by_tokens(lengths, None) == [list(range(len(lengths)))]
    # A budget every batch fits in leaves today's batches unchanged.
    assert batch_parts(list("abcdefgh"), 3, 10_000, lengths) == [[list("abc")], [list("def")], [list("gh")]]
    with pytest.raises(ValueError, match="max_batch_tokens must be >= 1"):
        batch_parts(list("ab"), 2, 0, [1, 1])


def test_token_batches_of_real_items_fit_the_budget(benchmark, tiny_vlm):
    vlm = tiny_vlm("qwen2-vl")
    encoder = Encoder(vlm)
    items = _mixed(benchmark, 8)
    lengths = token_lengths(items, encoder)
    assert lengths == [int(encoder.batch([i], train=True)["input_ids"].shape[1]) for i in items]
    budget = 2 * max(lengths)
    parts = list(item_batch_parts(items, encoder, 8, vlm.device, budget))
    assert len(parts) == 1 and len(parts[0]) > 1
    for part in parts[0]:
        assert part["input_ids"].numel() <= budget
    assert sum(p["input_ids"].shape[0] for p in parts[0]) == len(items)


def test_fisher_in_token_parts_equals_the_whole_batch(benchmark, tiny_vlm):
    from mllm_unlearn.training.fisher import diagonal_fisher

    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    items = _mixed(benchmark, 8)
    params = {n: p for n, p in vlm.model.named_parameters() if "language_model.layers.0.mlp" in n}
    loss = lambda m, b: losses.sequence_nll(m, b).mean()  # noqa: E731
    whole = diagonal_fisher(vlm.model, item_batch_parts(items, encoder, 4, vlm.device), loss, params)
    budget = 2 * max(token_lengths(items, encoder))
    split = list(item_batch_parts(items, encoder, 4, vlm.device, budget))
    assert any(len(parts) > 1 for parts in split)
    parted = diagonal_fisher(vlm.model, split, loss, params)
    for name in whole:
        torch.testing.assert_close(parted[name], whole[name], rtol=1e-5, atol=1e-12)


def test_path_search_and_mllmeraser_statistics_do_not_depend_on_the_token_budget(benchmark, tiny_vlm):
    from mllm_unlearn.localization.paths import PathSearchConfig, search_paths, text_path_task
    from mllm_unlearn.methods.mllmeraser import MLLMEraser

    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    samples = [i for i in benchmark.forget_train if i.modality == "qa"][:4]
    sites = [s.module_path for s in vlm.adapter.lm_ffn_sites(vlm.model)]
    task = text_path_task(vlm, encoder)
    budget = 2 * 4 * max(token_lengths(samples, encoder))  # two samples × 4 steps per pass
    whole = search_paths(vlm.model, sites, samples, task, PathSearchConfig(steps=4, top_k=3, batch_size=4))
    parted = search_paths(vlm.model, sites, samples, task,
                          PathSearchConfig(steps=4, top_k=3, batch_size=4, max_batch_tokens=budget))
    for a, b in zip(whole.scores, parted.scores):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    assert [[t.tolist() for t in s] for s in whole.neurons] == [[t.tolist() for t in s] for s in parted.neurons]

    method = MLLMEraser()
    cfg = MethodConfig(batch_size=8, extra={"renderings": 1})
    opts = method.options(vlm, cfg)
    forget, retain = list(benchmark.forget_train[:6]), list(benchmark.retain_train[:6])
    full = method.statistics(vlm, forget, retain, opts, 8, 0)
    small = method.statistics(vlm, forget, retain, opts, 8, 0, max_batch_tokens=2 * max(token_lengths(forget, encoder)))
    for key in full:
        assert full[key].count == small[key].count
        for layer in full[key].sum:
            torch.testing.assert_close(small[key].sum[layer], full[key].sum[layer], rtol=1e-5, atol=1e-6)


# --- options -----------------------------------------------------------------------------------------

def test_checkpointing_default_follows_who_built_the_model(tmp_path):
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.prepare import INJECTION_META
    from mllm_unlearn.jobs.presets import model_built_here

    assert model_built_here(RunConfig())  # the tiny model built and cached here
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / INJECTION_META).write_text("{}")
    (tmp_path / "theirs").mkdir()
    assert model_built_here(RunConfig(model=str(tmp_path / "ours")))
    assert not model_built_here(RunConfig(model=str(tmp_path / "theirs")))


def test_cli_memory_options_are_training_options(tmp_path):
    from typer.testing import CliRunner

    from mllm_unlearn.cli import app

    for flag in (["--gradient-checkpointing"], ["--no-gradient-checkpointing"], ["--max-batch-tokens", "512"]):
        result = CliRunner().invoke(app, ["run", "--edit", str(tmp_path), *flag, "--runs-dir", str(tmp_path)])
        assert result.exit_code == 2 and flag[0].lstrip("-").replace("no-", "") in result.output.replace("[no-]", "")
    result = CliRunner().invoke(app, ["run", "--max-batch-tokens", "0", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "max-batch-tokens" in result.output
