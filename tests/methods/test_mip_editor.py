"""MIP-Editor on tiny models: only path-neuron columns move, edits are reversible, options checked."""
from dataclasses import replace

import pytest
import torch

from mllm_unlearn.interventions import CompositeEdit, LowRankDelta, NeuronMask, WeightDelta, load_edit
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.training import LoraOptions


def _unlearn(vlm, benchmark, lora=None, **extra):
    cfg = MethodConfig(max_steps=4, batch_size=4, lr=5e-2, progress=False, lora=lora,
                       extra={"path_samples": 4, "top_k": 3, **extra})
    forget = [i for i in benchmark.forget_train if i.modality == "qa"][:4] + \
        [i for i in benchmark.forget_train if i.modality == "vqa"][:4]
    return get_method("mip-editor").unlearn(vlm, forget, benchmark.retain_train[:8], cfg)


def _parts(edit):
    return [q for p in edit.parts for q in _parts(p)] if isinstance(edit, CompositeEdit) else [edit]


def _changed_weights(edit, before):
    """Whole new value of every weight the edit's weight parts change (sparse columns and LoRA factors
    written over ``before``)."""
    new = {}
    for part in _parts(edit):
        if isinstance(part, WeightDelta):
            new.update(part.new_values({**before, **new}))
        elif isinstance(part, LowRankDelta):
            for path in part.factors:
                name = f"{path}.weight"
                new[name] = new.get(name, before[name]).float() + part.delta(path)
    return new


@pytest.mark.parametrize("lora", [None, LoraOptions(r=4)])
def test_only_path_neuron_columns_move_after_several_adamw_steps(benchmark, tiny_vlm, lora):
    vlm = tiny_vlm("qwen2.5-vl")
    before = {k: v.detach().clone() for k, v in vlm.model.state_dict().items()}
    edit = _unlearn(vlm, benchmark, lora=lora, layer=1)
    assert all(torch.equal(before[k], v) for k, v in vlm.model.state_dict().items()), "model must be left as given"
    assert edit.meta["steps"] == 4
    paths = {p: set(i) for p, i in edit.meta["mip_editor"]["paths"].items()}
    assert any(".visual." in p for p in paths) and any("language_model" in p for p in paths)
    (delta,) = [p for p in _parts(edit) if isinstance(p, WeightDelta)]
    if lora is None:  # a few columns of each matrix: stored as those columns only
        assert not delta.tensors and all(s.dim == 1 for s in delta.sparse.values())
    changed = _changed_weights(edit, before)
    assert set(changed) == {f"{p}.weight" for p in paths}  # nothing else changed at all
    for name, new in changed.items():
        site = name[: -len(".weight")]
        columns = sorted(paths[site])
        others = [j for j in range(new.shape[1]) if j not in paths[site]]
        assert torch.equal(new[:, others], before[name][:, others]), "a non-path entry moved"  # bit for bit
        assert not torch.equal(new[:, columns], before[name][:, columns])
        assert new[:, columns].abs().sum() > 0  # pruned to zero, then retrained by RMisU


def test_grad_mask_and_restore_hold_even_with_weight_decay(benchmark, tiny_vlm, monkeypatch):
    # AdamW's decoupled weight decay would shrink every trainable entry; the post-step restore stops it.
    from mllm_unlearn.training import loop

    original = loop.TrainConfig.__init__

    def with_decay(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.weight_decay = 0.5

    monkeypatch.setattr(loop.TrainConfig, "__init__", with_decay)
    vlm = tiny_vlm("llava")
    before = {k: v.detach().clone() for k, v in vlm.model.state_dict().items()}
    edit = _unlearn(vlm, benchmark, layer=1, paths="text")
    for name, new in _changed_weights(edit, before).items():
        others = [j for j in range(new.shape[1]) if j not in edit.meta["mip_editor"]["paths"][name[:-7]]]
        assert torch.equal(new[:, others], before[name][:, others])


def test_neurons_after_the_steering_layer_are_pruned_by_a_mask_and_the_edit_is_reversible(benchmark, tiny_vlm,
                                                                                           tmp_path):
    vlm = tiny_vlm("llava")
    edit = _unlearn(vlm, benchmark, layer=0, paths="text")
    assert isinstance(edit, CompositeEdit)
    mask, delta = edit.parts
    assert isinstance(mask, NeuronMask) and isinstance(delta, WeightDelta)
    sites = vlm.adapter.lm_ffn_sites(vlm.model)
    assert list(mask.indices) == [sites[1].module_path] and bool((mask.scales[sites[1].module_path] == 0).all())
    assert delta.names == [f"{sites[0].module_path}.weight"]
    batch = {k: v for k, v in _inputs(vlm, benchmark).items()}
    with torch.no_grad():
        plain = vlm.model(**batch).logits
        with edit.applied(vlm):
            edited = vlm.model(**batch).logits
        restored = vlm.model(**batch).logits
        edit.save(tmp_path / "edit")
        with load_edit(tmp_path / "edit").applied(vlm):
            reloaded = vlm.model(**batch).logits
    assert not torch.allclose(plain, edited)
    assert torch.equal(plain, restored)
    assert torch.equal(edited, reloaded)


def _inputs(vlm, benchmark):
    from mllm_unlearn.data.collate import Encoder

    return Encoder(vlm).batch(benchmark.forget_train[:3], train=False)


def test_igi_only_and_ifi_only(benchmark, tiny_vlm):
    vlm = tiny_vlm("qwen2.5-vl")
    text = _unlearn(vlm, benchmark, paths="text", train=False)
    visual = _unlearn(vlm, benchmark, paths="visual", train=False)
    assert isinstance(text, NeuronMask) and isinstance(visual, NeuronMask)
    assert text.indices and all("language_model" in p for p in text.indices)
    assert visual.indices and all(".visual." in p for p in visual.indices)
    assert text.meta["steps"] == 0


def test_unknown_and_bad_options_are_rejected_clearly(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    method = get_method("mip-editor")
    forget, retain = benchmark.forget_train[:4], benchmark.retain_train[:4]
    with pytest.raises(ValueError, match=r"mip-editor: unknown option\(s\) topk; this method's options: .*top_k"):
        method.unlearn(vlm, forget, retain, MethodConfig(extra={"topk": 3}))
    with pytest.raises(ValueError, match="paths must be one of .*IGI only"):
        method.unlearn(vlm, forget, retain, MethodConfig(extra={"paths": "audio"}))
    with pytest.raises(ValueError, match="positions must be one of"):
        method.unlearn(vlm, forget, retain, MethodConfig(extra={"positions": "first"}))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 1\]"):
        method.unlearn(vlm, forget, retain, MethodConfig(extra={"layer": 5}))
    # Image items that carry no person name (a loader that knows none, e.g. CLEAR's) give no text-only forms.
    nameless = [replace(i, meta={}) for i in forget if i.modality == "vqa"]
    with pytest.raises(ValueError, match="needs text-only \\(QA\\) forget items"):
        method.unlearn(vlm, nameless, retain, MethodConfig(extra={"paths": "text"}))
