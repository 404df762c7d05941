import torch

from mllm_unlearn.interventions import WeightDelta, load_edit


def _logits(vlm, batch):
    with torch.no_grad():
        return vlm.model(**batch).logits


def test_apply_remove_restores_exactly_and_save_load_round_trips(benchmark, tiny_vlm, tmp_path):
    from mllm_unlearn.data.collate import Encoder

    vlm = tiny_vlm("llava")
    batch = Encoder(vlm).batch(benchmark.eval_splits["forget"][:4], train=False)
    before = _logits(vlm, batch)
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    edit = WeightDelta({name: state[name] + 0.5}, meta={"method": "test"})
    handle = edit.apply(vlm)
    assert not torch.equal(_logits(vlm, batch), before)
    handle.remove()
    assert torch.equal(_logits(vlm, batch), before)
    for n, p in vlm.model.named_parameters():
        assert torch.equal(p, state[n])

    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    assert isinstance(loaded, WeightDelta) and loaded.meta["method"] == "test"
    with loaded.applied(vlm):
        edited = _logits(vlm, batch)
    with edit.applied(vlm):
        assert torch.equal(_logits(vlm, batch), edited)
    assert torch.equal(_logits(vlm, batch), before)


def test_edit_from_another_model_is_refused(tiny_vlm):
    import pytest

    vlm = tiny_vlm("llava")
    with pytest.raises(ValueError, match="does not fit"):
        WeightDelta({"model.language_model.layers.0.mlp.down_proj.weight": torch.zeros(3, 3)}).apply(vlm)
    with pytest.raises(ValueError, match="not found"):
        WeightDelta({"no.such.weight": torch.zeros(3)}).apply(vlm)


def test_between_a_model_and_a_checkpoint_holds_exactly_the_changed_parameters(tiny_vlm, tmp_path):
    import pytest

    vlm = tiny_vlm("llava")
    vlm.save(tmp_path / "same")
    assert WeightDelta.between(vlm, tmp_path / "same").tensors == {}

    name = "model.language_model.layers.1.mlp.down_proj.weight"
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    with WeightDelta({name: state[name] * -1.0}).applied(vlm):
        vlm.save(tmp_path / "unlearned")
    delta = WeightDelta.between(vlm, tmp_path / "unlearned")
    assert list(delta.tensors) == [name] and torch.equal(delta.tensors[name], -state[name])
    assert delta.meta == {"method": "checkpoint", "checkpoint": str(tmp_path / "unlearned")}
    for n, p in vlm.model.named_parameters():  # comparing changed nothing
        assert torch.equal(p, state[n])

    tiny_vlm("qwen2-vl").save(tmp_path / "other")
    with pytest.raises(ValueError, match="is a qwen2-vl checkpoint; the model it is compared with is llava"):
        WeightDelta.between(vlm, tmp_path / "other")
