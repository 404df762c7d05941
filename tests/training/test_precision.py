"""Precision: bf16 weights train as fp32 masters (small updates kept), float16 refused, --dtype auto."""
import json
from contextlib import contextmanager

import pytest
import torch

from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.training import loop

MATRIX = "model.language_model.layers.0.mlp.down_proj.weight"


def _in(vlm, dtype):
    vlm.model.to(dtype)
    vlm.dtype = dtype
    return vlm


def _ga(vlm, benchmark, **cfg):
    options = dict(lr=1e-5, max_steps=3, batch_size=4, schedule="constant", warmup_ratio=0.0, progress=False)
    return get_method("ga").unlearn(vlm, benchmark.forget_train[:12], [], MethodConfig(**{**options, **cfg}))


def _changed_share(vlm, edit):
    state = {n: p.detach() for n, p in vlm.model.named_parameters()}
    before = state[MATRIX].float()
    new = edit.new_values(state)[MATRIX].float()
    return (new != before).float().mean().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ga_at_lr_1e5_for_three_steps_changes_nearly_every_entry_in_fp32_and_bf16(benchmark, tiny_vlm, dtype):
    vlm = _in(tiny_vlm(), dtype)
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    edit = _ga(vlm, benchmark)
    assert _changed_share(vlm, edit) >= 0.95
    # The model comes back in its own dtype and values; the edit keeps the fp32 master values.
    assert all(p.dtype == dtype and torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())
    assert edit.new_values(state)[MATRIX].dtype == torch.float32


def test_pure_bf16_adamw_would_round_most_of_those_updates_away(benchmark, tiny_vlm, monkeypatch):
    # The check of the test above: without fp32 master weights the same run moves few entries.
    @contextmanager
    def no_masters(trainable):
        yield {}

    monkeypatch.setattr(loop, "fp32_master_weights", no_masters)
    monkeypatch.setattr(loop, "compute_dtype_for", lambda *args, **kwargs: None)
    vlm = _in(tiny_vlm(), torch.bfloat16)
    edit = _ga(vlm, benchmark)
    assert edit.new_values(dict(vlm.model.named_parameters()))[MATRIX].dtype == torch.bfloat16
    assert _changed_share(vlm, edit) < 0.5


def test_mixed_precision_trains_fp32_masters_with_a_bf16_forward(tiny_vlm, benchmark):
    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.training.losses import sequence_nll

    vlm = _in(tiny_vlm(), torch.bfloat16)
    encoder = Encoder(vlm)
    seen = []

    def loss(model, batch):
        value = sequence_nll(model, batch).mean()
        seen.append((value.dtype, torch.is_autocast_enabled("cpu"),
                     dict(model.named_parameters())[MATRIX].dtype))
        return value

    result = loop.train(vlm.model, benchmark.forget_train[:4], lambda b: encoder.batch(b, train=True), loss,
                        loop.TrainConfig(lr=1e-5, max_steps=2, batch_size=2, progress=False))
    assert seen and all(autocast and weight == torch.float32 for _, autocast, weight in seen)
    assert set(result.master_weights) == {n for n, _ in vlm.model.named_parameters()}
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in result.master_weights.values())
    assert all(p.dtype == torch.bfloat16 for p in vlm.model.parameters())


def test_float16_training_is_refused_with_a_message_naming_dtype(benchmark, tiny_vlm):
    vlm = _in(tiny_vlm(), torch.float16)
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    with pytest.raises(ValueError, match="float16 training is not supported.*--dtype bfloat16"):
        _ga(vlm, benchmark)
    assert all(p.dtype == torch.float16 and torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())
    # LoRA too: peft's adapters on a float16 model would train in fp32, but the refusal is the same rule.
    names = [n for n, _ in vlm.model.named_parameters()]
    with pytest.raises(ValueError, match="float16 training is not supported"):
        _ga(vlm, benchmark, lora=loop.LoraOptions(r=2))
    assert [n for n, _ in vlm.model.named_parameters()] == names  # peft's wrapper removed


def test_lora_on_a_bf16_model_trains_fp32_factors(benchmark, tiny_vlm):
    vlm = _in(tiny_vlm(), torch.bfloat16)
    edit = _ga(vlm, benchmark, lora=loop.LoraOptions(r=2, alpha=4), lr=1e-3)
    assert edit.kind == "low_rank_delta"
    assert all(f["a"].dtype == torch.float32 and torch.isfinite(f["b"]).all() for f in edit.factors.values())
    assert any(f["b"].abs().sum() > 0 for f in edit.factors.values())


@pytest.mark.parametrize("method,extra,lora", [
    ("mmunlearner", {"mask": "language"}, None),
    ("mmunlearner", {"mask": "language"}, loop.LoraOptions(r=2, alpha=2)),
    # No pruning: retrained columns start from their (bf16) values, not from zero.
    ("mip-editor", {"path_samples": 4, "top_k": 3, "layer": 1, "prune_scale": 1.0}, None)])
def test_masked_methods_train_a_bf16_model_and_keep_fp32_updates(benchmark, tiny_vlm, method, extra, lora):
    vlm = _in(tiny_vlm(), torch.bfloat16)
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    forget = [i for i in benchmark.forget_train if i.modality == "qa"][:4] + \
        [i for i in benchmark.forget_train if i.modality == "vqa"][:4]
    cfg = MethodConfig(max_steps=2, batch_size=4, lr=1e-5, progress=False, lora=lora, extra=extra)
    edit = get_method(method).unlearn(vlm, forget, benchmark.retain_train[:8], cfg)
    parts = getattr(edit, "parts", [edit])
    (delta,) = [p for p in parts if p.kind == "weight_delta"]
    new = delta.new_values({n: t for n, t in state.items()})
    assert new and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in new.values())
    # The edit holds updates of ~1e-5 that rounding to bf16 would undo (fp32 value moved, bf16 value not).
    kept_only_in_fp32 = sum(((t != state[n].float()) & (t.bfloat16() == state[n])).sum().item() for n, t in new.items())
    moved = sum((t != state[n].float()).sum().item() for n, t in new.items())
    assert kept_only_in_fp32 > 0.5 * moved > 0
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())


def test_dtype_auto_reads_the_checkpoint_and_keeps_tool_built_models_in_fp32(tmp_path, tiny_vlm):
    from mllm_unlearn.models.base import checkpoint_dtype, load_vlm

    vlm = tiny_vlm()
    vlm.save(tmp_path / "plain")
    assert checkpoint_dtype(tmp_path / "plain") == "float32"
    for stored, expected, for_export in (("bfloat16", "bfloat16", "bfloat16"), ("float16", "bfloat16", "float16")):
        folder = tmp_path / stored
        _in(tiny_vlm(), getattr(torch, stored)).save(folder)
        assert json.loads((folder / "config.json").read_text()).get("dtype") == stored
        assert checkpoint_dtype(folder) == expected  # float16 checkpoints train in bf16
        assert checkpoint_dtype(folder, training=False) == for_export
        assert load_vlm(folder, device="cpu", dtype="auto").dtype == getattr(torch, expected)
        (folder / "injection.json").write_text("{}")  # a model this tool built: float32
        assert checkpoint_dtype(folder) == "float32"
    # A config naming the dtype only in its text config, the older key.
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    config.setdefault("text_config", {})["torch_dtype"] = "bfloat16"
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(tmp_path / "plain") == "bfloat16"


def test_run_defaults_to_dtype_auto_and_records_what_it_used():
    import inspect

    from mllm_unlearn.cli import run
    from mllm_unlearn.jobs.config import RunConfig

    assert RunConfig().dtype == "auto"
    assert inspect.signature(run).parameters["dtype"].default == "auto"  # Annotated option: the plain default
