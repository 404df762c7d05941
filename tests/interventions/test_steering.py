import inspect
from contextlib import nullcontext

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import RandomFeatures, Steering, load_edit
from mllm_unlearn.interventions.steering import CACHE_ARGUMENTS, _StepState, layer_cache

from ..conftest import weights_hash


def _logits(vlm, batch):
    with torch.no_grad():
        return vlm.model(**batch).logits


def _block_output(vlm, batch, layer, edit=None):
    """Block ``layer``'s output in a forward over ``batch``: after the edit's hook when ``edit`` is given."""
    block = vlm.adapter.lm_layers(vlm.model)[layer]
    seen = []
    with edit.applied(vlm) if edit is not None else nullcontext():
        hook = block.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            _logits(vlm, batch)
        finally:
            hook.remove()
    return seen[0]


def _random_edit(vlm, layers, strength=0.5, decode=False, seed=0):
    width = vlm.model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    return Steering({layer: torch.randn(width, width, generator=generator) / width ** 0.5 for layer in layers},
                    strength, decode, meta={"method": "test"})


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_steering_removes_exactly_keeps_weights_and_round_trips(family, benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm(family)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:4]
    batch = Encoder(vlm).batch(items, train=False)
    before, weights = _logits(vlm, batch), weights_hash(vlm.model)
    edit = _random_edit(vlm, [0, 1])
    with edit.applied(vlm):
        steered = _logits(vlm, batch)
    assert not torch.allclose(steered, before, atol=1e-3)
    assert torch.equal(_logits(vlm, batch), before)  # hooks gone: exact restore
    assert weights_hash(vlm.model) == weights  # no parameter touched

    edit.save(tmp_path / "steer")
    loaded = load_edit(tmp_path / "steer")
    assert isinstance(loaded, Steering) and loaded.meta["method"] == "test"
    assert loaded.layers == [0, 1] and loaded.strength == 0.5 and loaded.decode is False
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch), steered)
    assert edit.extra_bytes == 2 * edit.hidden_size ** 2 * 4


def test_prefill_adds_strength_times_last_token_map_to_every_position(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["retain"] if i.task == "mcq"][:3], train=False)
    layer = vlm.adapter.lm_layers(vlm.model)[1]
    seen = []
    capture = layer.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    try:
        _logits(vlm, batch)
        edit = _random_edit(vlm, [1], strength=0.7)
        with edit.applied(vlm):  # ``capture`` was registered first, so it runs before the steering hook
            _logits(vlm, batch)
    finally:
        capture.remove()
    plain, steered_input = seen
    # ``capture`` ran before the steering hook, so it saw block 1's unsteered output both times.
    assert torch.equal(plain, steered_input)
    # By hand: the steered output is plain + 0.7 · (plain[:, -1] @ W) at every position.
    edit = _random_edit(vlm, [1], strength=0.7)
    expected = plain + 0.7 * (plain[:, -1] @ edit.matrices[1])[:, None, :]
    torch.testing.assert_close(_block_output(vlm, batch, 1, edit), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_generate_steers_the_prefill_once_and_decode_steps_only_with_decode(family, benchmark, tiny_vlm):
    vlm = tiny_vlm(family)
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "generation"][:2], train=False)

    def generate(edit):
        record: dict = {}
        handle = edit.apply(vlm, record)
        try:
            with torch.no_grad():
                out = vlm.model.generate(**batch, do_sample=False, max_new_tokens=4, min_new_tokens=4,
                                         pad_token_id=vlm.tokenizer.pad_token_id)
        finally:
            handle.remove()
        return out[:, batch["input_ids"].shape[1]:], {key: len(rows) for key, rows in record.items()}

    prefill_only = _random_edit(vlm, [0, 1], strength=2.0)
    _, calls = generate(prefill_only)
    assert calls == {("prefill", 0): 1, ("prefill", 1): 1}  # prefill detected once; decode steps untouched
    _, calls = generate(Steering(prefill_only.matrices, 2.0, decode=True))
    assert calls == {("prefill", 0): 1, ("prefill", 1): 1, ("decode", 0): 3, ("decode", 1): 3}


def _output_cache(out):
    """A forward's KV cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def _filled_cache(vlm, batch):
    """The KV cache of a prefill over ``batch``."""
    with torch.no_grad():
        return _output_cache(vlm.model(**batch, use_cache=True))


def _cache_parameter(layer):
    """(the layer's forward parameters without self, its cache parameter's name, that parameter's index)."""
    parameters = list(inspect.signature(type(layer).forward).parameters)[1:]
    declared = next(name for name in parameters if name in CACHE_ARGUMENTS)
    return parameters, declared, parameters.index(declared)


def _respell(spelling, layer):
    """A forward pre-hook that passes the layer's KV cache as ``spelling`` (a keyword, or "positional")."""
    parameters, _, position = _cache_parameter(layer)

    def hook(_module, args, kwargs):
        cache = next((kwargs.pop(name) for name in CACHE_ARGUMENTS if name in kwargs), None)
        if spelling == "positional":  # the arguments before the cache move from keywords to positions
            args = (*args, *(kwargs.pop(name, None) for name in parameters[len(args):position]), cache)
        else:
            kwargs[spelling] = cache
        return args, kwargs

    return hook


def _restore(layer):
    """A forward pre-hook that undoes ``_respell``: the layer gets its cache as it declares it."""
    parameters, declared, position = _cache_parameter(layer)

    def hook(_module, args, kwargs):
        if len(args) > position:  # back from positions to keywords
            kwargs.update(zip(parameters[1:position + 1], args[1:position + 1]))
            args = args[:1]
        kwargs[declared] = next((kwargs.pop(name) for name in CACHE_ARGUMENTS if name in kwargs), None)
        return args, kwargs

    return hook


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "qwen2.5-vl"])
def test_step_state_reads_the_cache_under_every_spelling(family, benchmark, tiny_vlm):
    """transformers 5.24 passes decoder layers ``cache=``, 5.23 ``past_key_values=``; either, or by position."""
    vlm = tiny_vlm(family)
    layer = vlm.adapter.lm_layers(vlm.model)[0]
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "generation"][:2], train=False)
    filled = _filled_cache(vlm, batch)
    assert filled.get_seq_length(0) == batch["input_ids"].shape[1]
    empty = type(filled)()
    hidden = torch.zeros(2, 1, vlm.model.config.text_config.hidden_size)
    _, _, position = _cache_parameter(layer)
    state = _StepState()
    for cache, prefill in ((filled, False), (empty, True), (None, True)):
        for name in ("cache", "past_key_values"):
            state.prefill = not prefill
            state.record(layer, (hidden,), {name: cache, "use_cache": True})
            assert state.prefill is prefill, (name, cache)
        state.prefill = not prefill
        state.record(layer, (hidden, *[None] * (position - 1), cache), {})
        assert state.prefill is prefill, ("positional", cache)
    state.prefill = False
    state.record(layer, (hidden,), {})  # no cache at all (e.g. the likelihood scorer's forward)
    assert state.prefill is True
    with pytest.raises(TypeError, match="no get_seq_length"):
        layer_cache(layer, (hidden,), {"cache": ((torch.zeros(1), torch.zeros(1)),)})


@pytest.mark.parametrize("spelling", ["cache", "past_key_values", "positional"])
def test_generate_tells_decode_steps_whatever_the_cache_is_called(spelling, benchmark, tiny_vlm):
    """The steering hooks see the cache under ``spelling`` (a pre-hook renames it before them and
    back after them, so the layer itself runs as this transformers version expects)."""
    vlm = tiny_vlm("qwen2.5-vl")
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "generation"][:2], train=False)
    layer = vlm.adapter.lm_layers(vlm.model)[0]
    _, declared, _ = _cache_parameter(layer)
    generate_args = dict(do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=vlm.tokenizer.pad_token_id)
    with torch.no_grad():
        plain = vlm.model.generate(**batch, **generate_args)
    for decode, expected in ((False, {("prefill", 0): 1, ("prefill", 1): 1}),
                             (True, {("prefill", 0): 1, ("prefill", 1): 1, ("decode", 0): 3, ("decode", 1): 3})):
        record: dict = {}
        edit = _random_edit(vlm, [0, 1], strength=2.0, decode=decode)
        handle = edit.apply(vlm, record)
        renamed = layer.register_forward_pre_hook(_respell(spelling, layer), with_kwargs=True, prepend=True)
        restored = layer.register_forward_pre_hook(_restore(layer), with_kwargs=True)
        seen = []  # cached positions the layer itself received, after ``restored`` (the cache object grows)
        spy = layer.register_forward_pre_hook(
            lambda _m, _a, kwargs: seen.append(kwargs[declared] is not None and kwargs[declared].get_seq_length(0)),
            with_kwargs=True)
        try:
            with torch.no_grad():
                vlm.model.generate(**batch, **generate_args)
        finally:
            for hook in (renamed, restored, spy):
                hook.remove()
            handle.remove()
        assert {key: len(rows) for key, rows in record.items()} == expected, (spelling, decode)
        prompt = batch["input_ids"].shape[1]
        assert seen == [0, prompt, prompt + 1, prompt + 2]  # a real prefill, then three real decode steps
    with torch.no_grad():  # the renaming hooks left the model as it was
        assert torch.equal(vlm.model.generate(**batch, **generate_args), plain)


def test_prefill_only_steering_acts_through_the_cache(benchmark, tiny_vlm):
    """Greedy generate with the edit == a steered prefill, then unsteered decoding from its cache (by hand)."""
    vlm = tiny_vlm("llava")
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "generation"][:2], train=False)
    edit = _random_edit(vlm, [0, 1], strength=2.0)
    with edit.applied(vlm), torch.no_grad():
        generated = vlm.model.generate(**batch, do_sample=False, max_new_tokens=4, min_new_tokens=4,
                                       pad_token_id=vlm.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    with torch.no_grad():
        mask = batch["attention_mask"]
        prefill_positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate computes them
        with edit.applied(vlm):
            out = vlm.model(**batch, position_ids=prefill_positions, use_cache=True)
        cache, token, mask = _output_cache(out), out.logits[:, -1].argmax(-1, keepdim=True), batch["attention_mask"]
        cache_argument = "cache" if "cache" in inspect.signature(vlm.model.forward).parameters else "past_key_values"
        tokens = [token]
        for _ in range(3):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = mask.long().cumsum(-1)[:, -1:] - 1  # left padding: positions count real tokens only
            out = vlm.model(input_ids=token, attention_mask=mask, position_ids=positions, **{cache_argument: cache},
                            use_cache=True)
            cache, token = _output_cache(out), out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    assert torch.equal(generated, torch.cat(tokens, dim=1))
    with torch.no_grad():
        unsteered = vlm.model.generate(**batch, do_sample=False, max_new_tokens=4, min_new_tokens=4,
                                       pad_token_id=vlm.tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:]
    assert not torch.equal(unsteered, generated)


def test_edit_that_does_not_fit_is_refused_and_bake_is_refused(tiny_vlm):
    vlm = tiny_vlm("llava")
    width = vlm.model.config.text_config.hidden_size
    with pytest.raises(ValueError, match="LM layer 7"):
        Steering({7: torch.zeros(width, width)}).apply(vlm)
    with pytest.raises(ValueError, match="32 wide"):
        Steering({0: torch.zeros(32, 32)}).apply(vlm)
    with pytest.raises(ValueError, match="square"):
        Steering({0: torch.zeros(width, 3)})
    with pytest.raises(ValueError, match="cannot be baked"):
        Steering({0: torch.zeros(width, width)}).bake(vlm)


def test_task_strength_is_used_inside_for_task_saved_and_seen_by_the_evaluator(benchmark, tiny_vlm, tmp_path):
    from mllm_unlearn.eval import EvalConfig, Evaluator

    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:3]
    batch = Encoder(vlm).batch(items, train=False)
    plain = _logits(vlm, batch)
    edit = _random_edit(vlm, [1], strength=0.0)
    edit.task_strengths = {"mcq": 2.0}
    with edit.applied(vlm):
        assert torch.equal(_logits(vlm, batch), plain)  # default strength 0: no change outside a task
        with edit.for_task("mcq"):
            steered_mcq = _logits(vlm, batch)
        with edit.for_task("cloze"):  # no strength of its own: the default
            assert torch.equal(_logits(vlm, batch), plain)
        assert edit.active_strength == 0.0  # restored on leaving
    assert not torch.allclose(steered_mcq, plain, atol=1e-3)

    edit.save(tmp_path / "steer")
    assert load_edit(tmp_path / "steer").task_strengths == {"mcq": 2.0}

    # The evaluator sets each group's task while scoring it.
    cfg = EvalConfig(splits=("forget",), progress=False, max_items_per_group=2)
    evaluator = Evaluator(vlm, cfg)
    seen = {}
    score_items = evaluator._score_items

    def spy(items, task, demos):
        seen[task] = edit.active_strength
        return score_items(items, task, demos)

    evaluator._score_items = spy
    evaluator.evaluate(benchmark, edit)
    assert seen == {"mcq": 2.0, "cloze": 0.0, "generation": 0.0}


def _lifted_edit(vlm, layers, width=48, strength=0.5, seed=0):
    hidden = vlm.model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    features = {layer: RandomFeatures.draw(torch.randn(hidden, generator=generator), 2.0, width, seed=seed + layer)
                for layer in layers}
    matrices = {layer: torch.randn(width, hidden, generator=generator) / width ** 0.5 for layer in layers}
    return Steering(matrices, strength, meta={"method": "test"}, features=features)


def test_random_features_are_seeded_relu_of_standardised_states():
    mean = torch.tensor([1.0, -1.0, 0.5])
    first, again = RandomFeatures.draw(mean, 2.0, 16, seed=3), RandomFeatures.draw(mean, 2.0, 16, seed=3)
    assert torch.equal(first.proj, again.proj) and torch.equal(first.bias, again.bias)
    assert not torch.equal(first.proj, RandomFeatures.draw(mean, 2.0, 16, seed=4).proj)
    h = torch.randn(5, 3)
    expected = torch.relu(((h - mean) / 2.0) @ first.proj + first.bias)
    torch.testing.assert_close(first(h), expected)
    assert (first(h) >= 0).all() and first.width == 16 and first.hidden_size == 3
    with pytest.raises(ValueError, match="scale must be > 0"):
        RandomFeatures(mean, 0.0, first.proj, first.bias)
    with pytest.raises(ValueError, match="proj is"):
        RandomFeatures(mean, 1.0, first.proj[:2], first.bias)


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_lifted_steering_adds_strength_times_features_map_restores_and_round_trips(family, benchmark, tiny_vlm,
                                                                                   tmp_path):
    vlm = tiny_vlm(family)
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:3], train=False)
    before, weights = _logits(vlm, batch), weights_hash(vlm.model)
    edit = _lifted_edit(vlm, [1], strength=0.7)
    plain = _block_output(vlm, batch, 1)
    expected = plain + 0.7 * (edit.features[1](plain[:, -1]) @ edit.matrices[1])[:, None, :]
    torch.testing.assert_close(_block_output(vlm, batch, 1, edit), expected, rtol=1e-5, atol=1e-5)
    with edit.applied(vlm):
        steered = _logits(vlm, batch)
    torch.testing.assert_close(edit.steering_vectors(1, plain[:, -1]), (expected - plain)[:, -1], rtol=1e-5, atol=1e-5)
    assert torch.equal(_logits(vlm, batch), before) and weights_hash(vlm.model) == weights

    edit.save(tmp_path / "lifted")
    loaded = load_edit(tmp_path / "lifted")
    assert set(loaded.features) == {1} and loaded.features[1].scale == 2.0
    assert torch.equal(loaded.features[1].proj, edit.features[1].proj)
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch), steered)
    hidden = edit.hidden_size
    assert edit.extra_bytes == (48 * hidden + hidden + 48 * hidden + 48) * 4  # W, mean, proj, bias


def test_lifted_matrix_must_match_its_feature_map(tiny_vlm):
    vlm = tiny_vlm("llava")
    hidden = vlm.model.config.text_config.hidden_size
    lift = RandomFeatures.draw(torch.zeros(hidden), 1.0, 8, seed=0)
    with pytest.raises(ValueError, match=r"\(lifted width × hidden\) = \(8, "):
        Steering({0: torch.zeros(hidden, hidden)}, features={0: lift})
    with pytest.raises(ValueError, match="layers \\[2\\] that have no steering matrix"):
        Steering({0: torch.zeros(8, hidden)}, features={0: lift, 2: lift})


def test_rank_one_matrices_are_applied_as_two_vectors_with_the_same_result(benchmark, tiny_vlm):
    from mllm_unlearn.interventions.steering import rank_one_factors

    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, generator=generator), torch.randn(4, generator=generator)
    left, right = rank_one_factors(torch.outer(u, v))
    torch.testing.assert_close(torch.outer(left, right), torch.outer(u, v))
    assert rank_one_factors(torch.randn(6, 4, generator=generator)) is None
    assert rank_one_factors(torch.zeros(6, 4)) is None

    vlm = tiny_vlm("llava")
    hidden = vlm.model.config.text_config.hidden_size
    matrix = torch.outer(torch.randn(hidden, generator=generator), torch.randn(hidden, generator=generator)) / hidden
    edit = Steering({1: matrix}, 0.9)
    assert set(edit.factors) == {1} and edit.applied_bytes(4) == 2 * hidden * 4
    assert _random_edit(vlm, [1]).applied_bytes(4) == hidden * hidden * 4  # full rank: the matrix itself
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:3], train=False)
    plain = _block_output(vlm, batch, 1)
    torch.testing.assert_close(_block_output(vlm, batch, 1, edit), plain + 0.9 * (plain[:, -1] @ matrix)[:, None, :],
                               rtol=1e-5, atol=1e-5)


def test_pooled_state_is_the_mean_over_real_positions():
    from mllm_unlearn.interventions.steering import pooled_state

    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pooled = pooled_state(hidden, mask, "mean")
    torch.testing.assert_close(pooled[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    torch.testing.assert_close(pooled_state(hidden, None, "mean"), hidden.mean(1))
    assert torch.equal(pooled_state(hidden, mask, "last"), hidden[:, -1])
    with pytest.raises(ValueError, match="pool must be one of"):
        pooled_state(hidden, mask, "max")


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_mean_pooled_gate_reads_real_positions_only_and_round_trips(family, benchmark, tiny_vlm, tmp_path):
    """pool="mean": strength·φ(mean of the block's output over the real positions)·W is added at
    every prefill position; left padding does not change a row's steering (so batched and
    alone agree), and the pool is saved with the edit."""
    vlm = tiny_vlm(family)
    encoder = Encoder(vlm)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"]
    items = [next(i for i in items if i.modality == "vqa"), next(i for i in items if i.modality == "qa")]
    batch = encoder.batch(items, train=False)
    assert (batch["attention_mask"] == 0).any()  # a padded row
    lifted = _lifted_edit(vlm, [1], strength=0.7)
    edit = Steering(lifted.matrices, 0.7, features=lifted.features, pool="mean")
    plain = _block_output(vlm, batch, 1)
    mask = batch["attention_mask"].float()[..., None]
    mean = (plain * mask).sum(1) / mask.sum(1)
    expected = plain + 0.7 * (edit.features[1](mean) @ edit.matrices[1])[:, None, :]
    torch.testing.assert_close(_block_output(vlm, batch, 1, edit), expected, rtol=1e-5, atol=1e-5)
    with edit.applied(vlm):
        together = _logits(vlm, batch)[:, -1]
        for row, item in enumerate(items):
            alone = _logits(vlm, encoder.batch([item], train=False))[0, -1]
            torch.testing.assert_close(together[row], alone, rtol=1e-4, atol=1e-4)
    edit.save(tmp_path / "pooled")
    loaded = load_edit(tmp_path / "pooled")
    assert loaded.pool == "mean"
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch)[:, -1], together)
    with pytest.raises(ValueError, match="pool must be one of"):
        Steering(lifted.matrices, features=lifted.features, pool="max")


def test_mean_pooled_decode_steps_use_the_running_mean(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    item = next(i for i in benchmark.eval_splits["forget"] if i.task == "generation" and i.modality == "qa")
    batch = Encoder(vlm).batch([item], train=False)
    lifted = _lifted_edit(vlm, [1], strength=0.5)
    edit = Steering(lifted.matrices, 0.5, decode=True, features=lifted.features, pool="mean")
    block = vlm.adapter.lm_layers(vlm.model)[1]
    seen = []  # registered before the edit's hook: the unsteered outputs of each forward
    hook = block.register_forward_hook(lambda _m, _a, out: seen.append((out[0] if isinstance(out, tuple) else out).clone()))
    record: dict = {}
    handle = edit.apply(vlm, record)
    try:
        with torch.no_grad():
            vlm.model.generate(**batch, do_sample=False, max_new_tokens=3, min_new_tokens=3,
                               pad_token_id=vlm.tokenizer.pad_token_id)
    finally:
        handle.remove()
        hook.remove()
    states = torch.cat(seen, dim=1)[0]  # prompt positions, then one per decode step
    prompt = batch["input_ids"].shape[1]
    for step, norm in enumerate(torch.cat(record[("decode", 1)])):
        running = states[:prompt + step + 1].mean(0)
        expected = 0.5 * (edit.features[1](running) @ edit.matrices[1])
        torch.testing.assert_close(norm, expected.norm(), rtol=1e-4, atol=1e-4)


def test_rank_one_edit_is_saved_as_two_vectors_and_older_full_matrix_files_still_load(benchmark, tiny_vlm, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    vlm = tiny_vlm("llava")
    hidden = vlm.model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(1)
    u, v = torch.randn(hidden, generator=generator), torch.randn(hidden, generator=generator) / hidden
    edit = Steering({1: torch.outer(u, v), 0: _random_edit(vlm, [0]).matrices[0]}, 0.8, meta={"method": "test"})
    assert set(edit.factors) == {1} and edit.layers == [0, 1] and edit.hidden_size == hidden
    assert edit.extra_bytes == (2 * hidden + hidden * hidden) * 4
    batch = Encoder(vlm).batch([i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:3], train=False)
    with edit.applied(vlm):
        steered = _logits(vlm, batch)

    edit.save(tmp_path / "new")
    with safe_open(str(tmp_path / "new" / "steering.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == ["layer.0", "layer.1.left", "layer.1.right"]
    loaded = load_edit(tmp_path / "new")
    assert all(torch.equal(a, b) for a, b in zip(loaded.factors[1], edit.factors[1]))
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch), steered)

    # A file written before factors were stored holds every layer's full matrix.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "edit.json").write_text((tmp_path / "new" / "edit.json").read_text())
    save_file({f"layer.{k}": m.contiguous() for k, m in edit.matrices.items()}, str(tmp_path / "old" / "steering.safetensors"),
              metadata={"strength": "0.8", "decode": "False"})
    old = load_edit(tmp_path / "old")
    assert set(old.factors) == {1} and old.pool == "last"
    with old.applied(vlm):
        torch.testing.assert_close(_logits(vlm, batch), steered, rtol=1e-5, atol=1e-5)

    direct = Steering({1: (u, v)}, 0.8)
    assert torch.equal(direct.matrices[1], torch.outer(u, v))
    with pytest.raises(ValueError, match="must be two vectors"):
        Steering({1: (torch.outer(u, v), v)})
    with pytest.raises(ValueError, match="must be square"):
        Steering({1: (u[:5], v)})
