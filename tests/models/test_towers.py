"""Tower boundaries: which parameters are the vision tower (+ projector) and which the language
model, per family; and LLaVA's unread last vision layer left out of every vision-side method."""
from dataclasses import replace

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.models.tiny import build_tiny_vlm

from ..conftest import FAMILIES, SMALL_SIZE

# Module names as transformers 5 spells them, written out here (not read from the adapter) so
# the test checks the adapter against the model rather than against itself.
VISION_MARKERS = {"llava": ("model.vision_tower.", "model.multi_modal_projector."),
                  "qwen2-vl": ("model.visual.",), "qwen2.5-vl": ("model.visual.",)}
PROJECTOR = {"llava": "model.multi_modal_projector.", "qwen2-vl": "model.visual.merger.",
             "qwen2.5-vl": "model.visual.merger."}


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_and_language_towers_are_disjoint_and_complete(family, tiny_vlm):
    vlm = tiny_vlm(family)
    vision = vlm.adapter.tower_parameters(vlm.model, "vision")
    language = vlm.adapter.tower_parameters(vlm.model, "language")
    names = [n for n, _ in vlm.model.named_parameters()]
    is_vision = lambda n: n.startswith(VISION_MARKERS[family])  # noqa: E731

    assert vision and language and not set(vision) & set(language)
    assert all(is_vision(n) for n in vision), "a language-model parameter counted as vision tower"
    assert not any(is_vision(n) for n in language), "a vision parameter counted as language model"
    projector = [n for n in names if n.startswith(PROJECTOR[family])]
    assert projector and set(projector) <= set(vision), "the projector / merger belongs to the vision side"
    assert {n for n in names if n.startswith("model.language_model.")} == set(language)
    # Everything else is the output head or (LLaVA) a vision module whose output is never read.
    rest = set(names) - set(vision) - set(language)
    assert all(n == "lm_head.weight" or (family == "llava" and is_vision(n)) for n in rest), sorted(rest)
    if family != "llava":
        assert {n for n in names if is_vision(n)} == set(vision)


def test_towers_are_found_through_a_peft_wrapper(tiny_vlm):
    from peft import LoraConfig, get_peft_model

    vlm = tiny_vlm("qwen2.5-vl")
    plain = {t: set(vlm.adapter.tower_parameters(vlm.model, t)) for t in ("vision", "language")}
    wrapped = get_peft_model(vlm.model, LoraConfig(r=2, target_modules=["q_proj"]))
    for tower, expected in plain.items():
        found = set(vlm.adapter.tower_parameters(wrapped, tower))
        # peft prefixes every name and splits the adapted linear layers into base_layer + lora_*
        unwrapped = {n.removeprefix("base_model.model.").replace(".base_layer.", ".") for n in found}
        assert {n for n in unwrapped if "lora_" not in n} == expected, tower
    assert all("language_model" in n for n in vlm.adapter.tower_parameters(wrapped, "language"))


def _logits(vlm, batch):
    with torch.no_grad():
        return vlm.model(**batch).logits


def test_llava_vision_sites_stop_at_the_layer_it_reads(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    adapter, model = vlm.adapter, vlm.model
    assert model.config.vision_feature_layer == -2 and len(adapter.vision_blocks(model)) == 2
    sites = adapter.vision_ffn_sites(model)
    assert [s.module_path for s in sites] == ["model.vision_tower.encoder.layers.0.mlp.fc2"]
    vision = adapter.tower_parameters(model, "vision")
    assert not any(".encoder.layers.1." in n or "post_layernorm" in n for n in vision)
    assert any(".encoder.layers.0." in n for n in vision)

    # What "not read" means: changing the last vision layer changes no output; the first one does.
    batch = Encoder(vlm).batch([i for i in benchmark.forget_train if i.modality == "vqa"][:2], train=False)
    before = _logits(vlm, batch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".encoder.layers.1." in name or "post_layernorm" in name:
                param.add_(torch.randn_like(param))
        assert torch.equal(_logits(vlm, batch), before)
        model.get_submodule(sites[0].module_path).weight.add_(1.0)
        assert not torch.allclose(_logits(vlm, batch), before)

    # The boundary follows the config, not a constant.
    model.config.vision_feature_layer = -1
    assert len(adapter.vision_ffn_sites(model)) == 2
    assert any(".encoder.layers.1." in n for n in adapter.tower_parameters(model, "vision"))


def test_one_layer_llava_has_no_vision_neurons_and_methods_say_so(benchmark, words):
    vlm = build_tiny_vlm("llava", words, replace(SMALL_SIZE, vision_layers=1))
    assert vlm.adapter.vision_ffn_sites(vlm.model) == []
    with pytest.raises(ValueError, match="no vision layer of this llava model is read"):
        vlm.adapter.vision_ffn_sites(vlm.model, required_by="test")
    forget, retain = benchmark.forget_train[::10], benchmark.retain_train[::37]
    with pytest.raises(ValueError, match=r"manu \(towers=vision\): no vision layer"):
        get_method("manu").unlearn(vlm, forget, retain, MethodConfig(batch_size=8, extra={"towers": "vision"}))
    with pytest.raises(ValueError, match=r"mip-editor \(paths=visual\): no vision layer"):
        get_method("mip-editor").unlearn(vlm, forget, retain, MethodConfig(extra={"paths": "visual", "train": False}))
    # towers=both scores the language model alone; the vision mask keeps the projector.
    edit = get_method("manu").unlearn(vlm, forget, retain, MethodConfig(batch_size=8, extra={"alpha": 0.1}))
    assert edit.indices and all("language_model" in p for p in edit.indices)
    vision = get_method("mmunlearner").tower_parameters(vlm, "vision")
    assert vision and all("multi_modal_projector" in n for n in vision)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "llava"])
def test_mmunlearner_vision_mask_changes_no_language_model_weight(family, benchmark, tiny_vlm):
    vlm = tiny_vlm(family)
    language = set(vlm.adapter.tower_parameters(vlm.model, "language"))
    cfg = MethodConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False, extra={"mask": "vision"})
    forget, retain = benchmark.forget_train[::4], benchmark.retain_train[::20]  # VQA and QA of several people
    edit = get_method("mmunlearner").unlearn(vlm, forget, retain, cfg)
    assert edit.tensors and not set(edit.tensors) & language
    before = {n: t.clone() for n, t in vlm.model.state_dict().items()}
    with edit.applied(vlm):
        after = vlm.model.state_dict()
        assert all(torch.equal(after[n], before[n]) for n in language)
        assert any(not torch.equal(after[n], before[n]) for n in after)  # the edit did change the vision side
        if family == "llava":  # nor the vision layer LLaVA never reads
            assert all(torch.equal(after[n], before[n]) for n in after if ".encoder.layers.1." in n)
