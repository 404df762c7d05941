import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.data.text_forms import text_only_items
from mllm_unlearn.interventions import NeuronMask
from mllm_unlearn.localization.statistics import SiteStatistics, stored_activations
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.manu import neuron_scores, select_neurons


def _stats(abs_mean, frequency, variance, rms):
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return SiteStatistics(10, t(abs_mean), t(frequency), torch.zeros(len(abs_mean)), t(variance), t(rms))


def test_score_is_the_weighted_forget_to_retain_ratio():
    forget = _stats([2.0, 1.0], [0.5, 0.2], [4.0, 1.0], [3.0, 1.0])
    retain = _stats([1.0, 2.0], [0.25, 0.4], [1.0, 4.0], [1.0, 3.0])
    eps = 1e-5
    # neuron 0: abs 2/1, freq 0.5/0.25, std 2/1, rms 3/1; neuron 1: the reciprocals' counterparts
    expected0 = 2 * (2 / (1 + eps) - 1) + 0 * (0.5 / (0.25 + eps) - 1) + 2 * (2 / (1 + eps) - 1) + 2 * (3 / (1 + eps) - 1)
    expected1 = 2 * (1 / (2 + eps) - 1) + 2 * (1 / (2 + eps) - 1) + 2 * (1 / (3 + eps) - 1)
    score = neuron_scores(forget, retain, {"abs": 2, "freq": 0, "var": 2, "rms": 2}, eps)  # the released code's weights
    assert torch.allclose(score, torch.tensor([expected0, expected1]), rtol=1e-6)
    only_freq = neuron_scores(forget, retain, {"freq": 1.0}, eps)
    assert torch.allclose(only_freq, torch.tensor([0.5 / (0.25 + eps) - 1, 0.2 / (0.4 + eps) - 1]), rtol=1e-6)


def test_global_and_per_layer_top_alpha_on_a_hand_made_case():
    scores = {"lm.0": torch.tensor([9.0, 8.0, 7.0, 6.0]), "lm.1": torch.tensor([1.0, 2.0, 10.0, 0.0])}
    glob = select_neurons(scores, 0.5, "global")  # 4 of 8: 10 (lm.1[2]), 9, 8, 7
    assert glob["lm.0"].tolist() == [0, 1, 2] and glob["lm.1"].tolist() == [2]
    per_layer = select_neurons(scores, 0.5, "per_layer")  # 2 of 4 in each layer
    assert per_layer["lm.0"].tolist() == [0, 1] and per_layer["lm.1"].tolist() == [1, 2]
    assert select_neurons(scores, 0.1, "per_layer")["lm.0"].numel() == 0  # round(0.4) = 0


def _subset(benchmark):
    forget = benchmark.forget_train[::10]  # VQA and QA items of the forget people
    retain = benchmark.retain_train[::37]
    assert {i.modality for i in forget} == {i.modality for i in retain} == {"vqa", "qa"}
    return forget, retain


@pytest.mark.parametrize("selection,scale", [("global", 0.0), ("per_layer", 0.9)])
def test_unlearn_selects_the_top_neurons_of_brute_force_scores(selection, scale, benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    forget, retain = _subset(benchmark)
    cfg = MethodConfig(batch_size=4, extra={"alpha": 0.05, "selection": selection, "scale": scale, "retain_items": 0})
    edit = get_method("manu").unlearn(vlm, forget, retain, cfg)
    assert isinstance(edit, NeuronMask)
    lm, vision = vlm.adapter.lm_ffn_sites(vlm.model), vlm.adapter.vision_ffn_sites(vlm.model)

    # Brute force: store every answer-free activation, score with the default equal weights.
    encoder = Encoder(vlm)

    def stats(items, sites_lm, sites_vision):
        batches = [encoder.batch(items[k:k + 4], train=True) for k in range(0, len(items), 4)]
        stored = stored_activations(vlm.model, batches, sites_lm, sites_vision, "all")
        return {n: SiteStatistics.from_activations(a, 0.1) for n, a in stored.items()}

    weights = {"abs": 1.0, "freq": 1.0, "var": 1.0, "rms": 1.0}
    split = lambda items, m: [i for i in items if i.modality == m]  # noqa: E731
    mm_f, mm_r = stats(split(forget, "vqa"), lm, vision), stats(split(retain, "vqa"), lm, vision)
    # The text side is MANU's text-only form of each person: their Pure_Text pairs, or, for a person
    # whose sampled items hold none, their image pairs with the name (data/text_forms.py).
    tx_f = stats(text_only_items(forget, "manu", "forget"), lm, [])
    tx_r = stats(text_only_items(retain, "manu", "retain"), lm, [])
    scores = {s.name: torch.maximum(neuron_scores(mm_f[s.name], mm_r[s.name], weights, 1e-5),
                                    neuron_scores(tx_f[s.name], tx_r[s.name], weights, 1e-5)) for s in lm}
    scores.update({s.name: neuron_scores(mm_f[s.name], mm_r[s.name], weights, 1e-5) for s in vision})
    expected = select_neurons(scores, 0.05, selection)
    paths = {s.name: s.module_path for s in lm + vision}
    assert {paths[n]: i.tolist() for n, i in expected.items() if i.numel()} == {p: i.tolist() for p, i in edit.indices.items()}
    assert all(torch.all(s == scale) for s in edit.scales.values())
    total = sum(s.width for s in lm + vision)
    if selection == "global":
        assert edit.neuron_count == round(0.05 * total)
    else:
        assert edit.meta["neurons_per_site"] == {s.name: round(0.05 * s.width) for s in lm + vision}
    assert edit.meta["options"]["scale"] == scale and edit.meta["items"]["forget_text"] == len(split(forget, "qa"))


def test_text_form_only_never_touches_the_vision_tower(benchmark, tiny_vlm):
    vlm = tiny_vlm("qwen2.5-vl")
    forget, retain = _subset(benchmark)
    edit = get_method("manu").unlearn(vlm, forget, retain, MethodConfig(batch_size=8, extra={"forms": ["text"], "alpha": 0.1}))
    vision_paths = {s.module_path for s in vlm.adapter.vision_ffn_sites(vlm.model)}
    assert edit.neuron_count > 0 and not set(edit.indices) & vision_paths
    assert set(edit.meta["neurons_per_site"]) == {s.name for s in vlm.adapter.lm_ffn_sites(vlm.model)}


def test_the_model_is_left_unchanged_and_the_mask_changes_outputs(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    forget, retain = _subset(benchmark)
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    edit = get_method("manu").unlearn(vlm, forget, retain, MethodConfig(batch_size=8, extra={"alpha": 0.1}))
    assert all(torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())
    assert all(not m._forward_pre_hooks for m in vlm.model.modules())
    batch = Encoder(vlm).batch(forget[:2], train=False)
    with torch.no_grad():
        before = vlm.model(**batch).logits
        with edit.applied(vlm):
            assert not torch.allclose(vlm.model(**batch).logits, before)
        assert torch.equal(vlm.model(**batch).logits, before)


@pytest.mark.parametrize("extra,message", [
    ({"alpa": 0.1}, "unknown option\\(s\\) alpa"),
    ({"alpha": 0}, "alpha is the fraction"),
    ({"selection": "layer"}, "selection must be"),
    ({"scale": 1.0}, "scale is the factor"),
    ({"weights": {"abs": 1, "mean": 1}}, "weights must map"),
    ({"positions": "first"}, "positions must be one of"),
    ({"forms": ["image"]}, "forms must be"),
])
def test_bad_options_are_rejected_clearly(extra, message, benchmark, tiny_vlm):
    with pytest.raises(ValueError, match=message):
        get_method("manu").unlearn(tiny_vlm("llava"), benchmark.forget_train[:2], benchmark.retain_train[:2],
                                   MethodConfig(extra=extra))


def test_missing_retain_form_is_named(benchmark, tiny_vlm):
    retain_text_only = [i for i in benchmark.retain_train if i.modality == "qa"][:4]
    with pytest.raises(ValueError, match="no multimodal \\(vqa\\) items"):
        get_method("manu").unlearn(tiny_vlm("llava"), benchmark.forget_train[:4], retain_text_only, MethodConfig())
