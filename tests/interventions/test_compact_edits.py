"""Compact edits: LoRA kept as factors (and exported as a peft adapter), row/column-sparse weight deltas."""
import json

import pytest
import torch

from mllm_unlearn.interventions import CompositeEdit, LowRankDelta, WeightDelta, load_edit
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.training import LoraOptions


def _batch(vlm, benchmark):
    from mllm_unlearn.data.collate import Encoder

    return Encoder(vlm).batch(benchmark.eval_splits["forget"][:4], train=False)


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _state(vlm):
    return {n: p.detach().clone() for n, p in vlm.model.named_parameters()}


def _lora_edit(vlm, benchmark):
    cfg = MethodConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False, lora=LoraOptions(r=2, alpha=4))
    return get_method("ga").unlearn(vlm, benchmark.forget_train[:8], [], cfg)


def test_lora_edit_is_factors_that_apply_remove_save_load_and_bake(benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm("qwen2-vl")
    batch = _batch(vlm, benchmark)
    plain, state = _logits(vlm.model, batch), _state(vlm)
    edit = _lora_edit(vlm, benchmark)
    assert isinstance(edit, LowRankDelta) and edit.meta["method"] == "ga" and edit.meta["steps"] == 3
    with edit.applied(vlm):
        edited = _logits(vlm.model, batch)
        assert all(torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())  # hooks, not weights
    assert not torch.allclose(edited, plain)
    assert torch.equal(_logits(vlm.model, batch), plain)  # removed exactly

    edit.save(tmp_path / "edit")
    stored = (tmp_path / "edit" / "factors.safetensors").stat().st_size
    whole = sum(state[f"{p}.weight"].numel() * 4 for p in edit.factors)  # the merged tensors, fp32
    assert stored < whole / 4, (stored, whole)
    assert edit.changed_parameters == whole // 4 and edit.stored_parameters < edit.changed_parameters / 4
    loaded = load_edit(tmp_path / "edit")
    assert isinstance(loaded, LowRankDelta) and loaded.meta == json.loads(json.dumps(edit.meta))
    assert all(torch.equal(loaded.factors[p]["a"], f["a"]) and torch.equal(loaded.factors[p]["b"], f["b"])
               and loaded.factors[p]["scale"] == f["scale"] for p, f in edit.factors.items())
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm.model, batch), edited)

    # Composes with a weight edit, removed in reverse, exactly.
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    both = CompositeEdit([loaded, WeightDelta({name: state[name] * 0.5})])
    with both.applied(vlm):
        assert not torch.allclose(_logits(vlm.model, batch), edited)
    assert all(torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())
    assert torch.equal(_logits(vlm.model, batch), plain)

    edit.bake(vlm)  # merged into the weights: the same model as the hooks gave
    assert torch.allclose(_logits(vlm.model, batch), edited, rtol=1e-5, atol=1e-5)


def test_lora_edit_exports_as_a_peft_adapter_that_reloads_to_the_same_logits(benchmark, tiny_vlm, tmp_path):
    from peft import PeftModel

    from mllm_unlearn.jobs.export import export_peft_adapter

    vlm = tiny_vlm("llava")
    batch = _batch(vlm, benchmark)
    edit = _lora_edit(vlm, benchmark)
    with edit.applied(vlm):
        edited = _logits(vlm.model, batch)
    edit.save(tmp_path / "edit")
    folder = export_peft_adapter(load_edit(tmp_path / "edit"), tmp_path / "adapter", base_model="tiny-llava")
    assert {"adapter_config.json", "adapter_model.safetensors", "unlearning.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llava"

    base = tiny_vlm("llava")  # a fresh copy of the model the edit was made on
    peft_model = PeftModel.from_pretrained(base.model, str(folder))
    adapted = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert {f"base_model.model.{p}" for p in edit.factors} == adapted  # exactly the edited layers
    assert torch.allclose(_logits(peft_model, batch), edited, rtol=1e-5, atol=1e-6)

    with pytest.raises(FileExistsError):
        export_peft_adapter(edit, folder)
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    with pytest.raises(ValueError, match="only a LoRA edit .* this edit is weight_delta \\+ low_rank_delta"):
        export_peft_adapter(CompositeEdit([WeightDelta({name: torch.zeros(1)}), edit]), tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_cli_export_writes_a_peft_adapter_for_a_lora_edit_and_a_checkpoint_otherwise(benchmark, tiny_vlm, tmp_path):
    from typer.testing import CliRunner

    from mllm_unlearn.cli import app

    vlm = tiny_vlm("llava")
    vlm.save(tmp_path / "model")
    _lora_edit(vlm, benchmark).save(tmp_path / "edit")
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(tmp_path / "edit"), "--model", str(tmp_path / "model"),
                               "--out", str(tmp_path / "adapter"), "--peft-adapter"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    done = runner.invoke(app, ["export", str(tmp_path / "edit"), "--model", str(tmp_path / "model"),
                               "--out", str(tmp_path / "checkpoint")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "checkpoint" / "config.json").is_file()
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    WeightDelta({name: _state(vlm)[name] + 1}).save(tmp_path / "dense")
    refused = runner.invoke(app, ["export", str(tmp_path / "dense"), "--model", str(tmp_path / "model"),
                                  "--out", str(tmp_path / "no"), "--peft-adapter"])
    assert refused.exit_code == 2 and "only a LoRA edit" in refused.output


@pytest.mark.parametrize("dim", [0, 1])
def test_a_few_changed_rows_or_columns_are_stored_alone_and_round_trip_bitwise(benchmark, tiny_vlm, tmp_path, dim):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm, benchmark)
    plain, state = _logits(vlm.model, batch), _state(vlm)
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    touched = [3, 17, 40]
    with torch.no_grad():
        weight = dict(vlm.model.named_parameters())[name]
        weight.index_add_(dim, torch.tensor(touched), torch.randn(weight.shape).index_select(dim, torch.tensor(touched)))
    edited = _logits(vlm.model, batch)
    delta = WeightDelta.from_models(state, vlm.model, meta={"method": "test"})
    with torch.no_grad():
        for n, p in vlm.model.named_parameters():
            p.copy_(state[n])
    assert not delta.tensors and list(delta.sparse) == [name]
    sparse = delta.sparse[name]
    assert sparse.dim == dim and sparse.index.tolist() == touched
    assert delta.changed_parameters == len(touched) * state[name].shape[1 - dim]

    delta.save(tmp_path / "edit")
    with delta.applied(vlm):  # the same change stored whole, for comparison
        dense_size = WeightDelta.from_models(state, vlm.model, compact=False)
    dense_size.save(tmp_path / "dense")
    assert (tmp_path / "edit" / "weights.safetensors").stat().st_size < \
        (tmp_path / "dense" / "weights.safetensors").stat().st_size / 4
    loaded = load_edit(tmp_path / "edit")
    assert torch.equal(loaded.sparse[name].values, sparse.values) and loaded.sparse[name].dim == dim
    for edit in (delta, loaded):
        handle = edit.apply(vlm)
        assert torch.equal(_logits(vlm.model, batch), edited)
        handle.remove()
        assert all(torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())
        assert torch.equal(_logits(vlm.model, batch), plain)
    assert torch.equal(loaded.new_values(state)[name], dense_size.tensors[name])


def test_whole_changes_stay_whole_and_edits_saved_before_stay_loadable(tiny_vlm, tmp_path):
    from safetensors.torch import save_file

    vlm = tiny_vlm("llava")
    state = _state(vlm)
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    with torch.no_grad():
        dict(vlm.model.named_parameters())[name].add_(0.25)
    delta = WeightDelta.from_models(state, vlm.model)
    assert list(delta.tensors) == [name] and not delta.sparse
    # The layout written before compact edits: whole tensors by parameter name.
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({name: state[name] + 0.25}, str(folder / "weights.safetensors"))
    (folder / "edit.json").write_text(json.dumps({"kind": "weight_delta", "meta": {"method": "ga"}}))
    old = load_edit(folder)
    assert isinstance(old, WeightDelta) and torch.equal(old.tensors[name], delta.tensors[name]) and not old.sparse


def test_a_sparse_edit_of_another_shape_is_refused(tiny_vlm):
    from mllm_unlearn.interventions.weight_delta import SparseSlices

    vlm = tiny_vlm("llava")
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    edit = WeightDelta({}, sparse={name: SparseSlices(1, torch.tensor([0]), torch.zeros(5, 1), (5, 9))})
    with pytest.raises(ValueError, match="does not fit this model"):
        edit.apply(vlm)
