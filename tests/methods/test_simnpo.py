"""SimNPO on a tiny model: its loss is the paper's on per-sequence mean NLLs, it forgets, its edit
applies and comes off exactly, and it declares its presets and search space with itself."""
import math

import pytest
import torch
import torch.nn.functional as F

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import load_edit
from mllm_unlearn.methods import MethodConfig, available_methods, get_method
from mllm_unlearn.methods.defaults import PAPER, TINY, method_preset
from mllm_unlearn.methods.search_spaces import search_space
from mllm_unlearn.training.losses import sequence_nll
from tests.conftest import weights_hash


def test_the_loss_is_simnpos_on_per_sequence_mean_nll(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    encoder = Encoder(vlm)
    batch = {"forget": encoder.batch(benchmark.forget_train[:4], train=True),
             "retain": encoder.batch(benchmark.retain_train[:4], train=True)}
    cfg = MethodConfig(retain_weight=0.5, extra={"beta": 2.0, "delta": 0.3, "forget_weight": 0.25})
    with torch.no_grad():
        value = get_method("simnpo").loss(vlm.model, batch, cfg)
        forget, retain = sequence_nll(vlm.model, batch["forget"]), sequence_nll(vlm.model, batch["retain"])
    by_hand = [0.25 * -(2 / 2.0) * math.log(1 / (1 + math.exp(-2.0 * (nll - 0.3)))) for nll in forget.tolist()]
    assert value.item() == pytest.approx(sum(by_hand) / 4 + 0.5 * retain.mean().item(), rel=1e-5)
    # No reference model: the forget term depends on the model's own likelihood alone, and falls
    # as the forget answers' NLL rises (bounded below by 0, unlike gradient ascent).
    higher = -(2 / 2.0) * F.logsigmoid(2.0 * (forget + 1.0 - 0.3))
    assert (higher < -(2 / 2.0) * F.logsigmoid(2.0 * (forget - 0.3))).all() and (higher > 0).all()


def test_simnpo_forgets_and_its_edit_is_exact(benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm()
    forget, retain = benchmark.forget_train[:8], benchmark.retain_train[:8]
    before = weights_hash(vlm.model)
    # The forget term alone: the untrained tiny model's retain NLL would fall with the forget one.
    cfg = MethodConfig(lr=3e-3, max_steps=4, batch_size=4, retain_weight=0.0, progress=False, extra={"beta": 2.5})
    edit = get_method("simnpo").unlearn(vlm, forget, retain, cfg)
    assert weights_hash(vlm.model) == before, "the method must leave the model as given"
    assert edit.meta["steps"] == 4 and edit.meta["losses"][-1] < edit.meta["losses"][0]
    encoder = Encoder(vlm)
    with torch.no_grad():
        vanilla_nll = sequence_nll(vlm.model, encoder.batch(forget, train=True)).mean().item()
        handle = edit.apply(vlm)
        unlearned_nll = sequence_nll(vlm.model, encoder.batch(forget, train=True)).mean().item()
        handle.remove()
    assert unlearned_nll > vanilla_nll  # the forget answers became less likely
    assert weights_hash(vlm.model) == before  # removed exactly
    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    with torch.no_grad():
        loaded.apply(vlm)
        assert sequence_nll(vlm.model, encoder.batch(forget, train=True)).mean().item() == pytest.approx(unlearned_nll)


def test_without_a_retain_term_simnpo_needs_no_retain_data(benchmark, tiny_vlm):
    cfg = MethodConfig(max_steps=1, batch_size=4, retain_weight=0.0, progress=False)
    edit = get_method("simnpo").unlearn(tiny_vlm(), benchmark.forget_train[:4], [], cfg)
    assert edit.meta["steps"] == 1


@pytest.mark.parametrize(("extra", "message"), [({"beta": 0}, "beta must be > 0"),
                                                ({"forget_weight": -1}, "forget_weight must be > 0"),
                                                ({"gamma": 1}, "unknown option")])
def test_bad_options_are_named(extra, message):
    with pytest.raises(ValueError, match=message):
        get_method("simnpo").check_options(MethodConfig(extra=extra))


def test_simnpo_declares_its_presets_and_search_space():
    assert "simnpo" in available_methods()
    tiny, paper = method_preset("simnpo", TINY), method_preset("simnpo", PAPER)
    assert paper.lr == 1e-5 and paper.extra == {"beta": 4.5, "delta": 0.0, "forget_weight": 0.125}
    assert tiny.extra["beta"] == get_method("simnpo").tiny_preset["extra"]["beta"]
    space = search_space("simnpo")
    assert {"lr", "extra.beta"} <= set(space)
    get_method("simnpo").check_options(tiny)
