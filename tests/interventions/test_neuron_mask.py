import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import CompositeEdit, NeuronMask, WeightDelta, load_edit


def _logits(vlm, batch):
    with torch.no_grad():
        return vlm.model(**batch).logits


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_mask_hooks_remove_exactly_bake_matches_and_round_trip(family, benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm(family)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:4]
    batch = Encoder(vlm).batch(items, train=False)
    before = _logits(vlm, batch)
    lm = vlm.adapter.lm_ffn_sites(vlm.model)
    vision = vlm.adapter.vision_ffn_sites(vlm.model)
    mask = NeuronMask({lm[0].module_path: [0, 5, 7], vision[0].module_path: [1, 2]},
                      {vision[0].module_path: torch.tensor([0.5, 0.25])}, meta={"method": "test"})
    assert mask.neuron_count == 5
    with mask.applied(vlm):
        masked = _logits(vlm, batch)
    assert not torch.equal(masked, before)
    assert torch.equal(_logits(vlm, batch), before)  # hooks gone: exact restore

    mask.save(tmp_path / "mask")
    loaded = load_edit(tmp_path / "mask")
    assert isinstance(loaded, NeuronMask) and loaded.meta["method"] == "test"
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch), masked)

    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    mask.bake(vlm)
    assert torch.allclose(_logits(vlm, batch), masked, atol=1e-5)
    column = vlm.model.get_submodule(lm[0].module_path).weight[:, 5]
    assert torch.count_nonzero(column) == 0
    changed = [n for n, p in vlm.model.named_parameters() if not torch.equal(p, state[n])]
    assert sorted(changed) == sorted([lm[0].module_path + ".weight", vision[0].module_path + ".weight"])


def test_mask_that_does_not_fit_is_refused(tiny_vlm):
    vlm = tiny_vlm("llava")
    site = vlm.adapter.lm_ffn_sites(vlm.model)[0]
    with pytest.raises(ValueError, match="not found"):
        NeuronMask({"no.such.module": [0]}).apply(vlm)
    with pytest.raises(ValueError, match=f"{site.width} neurons"):
        NeuronMask({site.module_path: [site.width]}).apply(vlm)
    with pytest.raises(ValueError, match="2 indices but 3 scales"):
        NeuronMask({site.module_path: [0, 1]}, {site.module_path: torch.ones(3)})


def test_composite_applies_in_order_and_round_trips(benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm("llava")
    batch = Encoder(vlm).batch(benchmark.eval_splits["forget"][:2], train=False)
    before = _logits(vlm, batch)
    site = vlm.adapter.lm_ffn_sites(vlm.model)[1]
    weight = site.module_path + ".weight"
    delta = WeightDelta({weight: vlm.model.get_submodule(site.module_path).weight.detach() * 2})
    edit = CompositeEdit([NeuronMask({site.module_path: [3]}), delta], meta={"method": "both"})
    with edit.applied(vlm):
        both = _logits(vlm, batch)
    assert torch.equal(_logits(vlm, batch), before)
    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    assert [p.kind for p in loaded.parts] == ["neuron_mask", "weight_delta"]
    with loaded.applied(vlm):
        assert torch.equal(_logits(vlm, batch), both)
    assert torch.equal(_logits(vlm, batch), before)


def test_a_composite_is_bakeable_only_if_every_part_is(tiny_vlm, tmp_path):
    from mllm_unlearn.interventions import Steering
    from mllm_unlearn.jobs.export import export_unlearned_model

    vlm = tiny_vlm("llava")
    hidden = vlm.model.config.text_config.hidden_size
    site = vlm.adapter.lm_ffn_sites(vlm.model)[1].module_path
    assert CompositeEdit([NeuronMask({site: [3]})]).bakeable
    mixed = CompositeEdit([NeuronMask({site: [3]}), Steering({1: torch.zeros(hidden, hidden)})])
    assert not mixed.bakeable
    with pytest.raises(ValueError, match="cannot be baked into weights"):
        export_unlearned_model(vlm, mixed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
