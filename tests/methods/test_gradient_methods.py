"""Gradient methods on a tiny model: first-step losses pinned, edits returned, model left untouched."""
import math

import pytest
import torch

from mllm_unlearn.methods import MethodConfig, get_method


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(name, benchmark, vlm, **extra_cfg):
    cfg = MethodConfig(max_steps=2, batch_size=4, lr=1e-3, progress=False, **extra_cfg)
    before = _state(vlm.model)
    edit = get_method(name).unlearn(vlm, benchmark.forget_train[:8], benchmark.retain_train[:8], cfg)
    after = _state(vlm.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "the method must leave the model as given"
    assert edit.meta["steps"] == 2 and len(edit.meta["losses"]) == 2
    return edit


def test_npo_first_loss_is_two_over_beta_log_two_with_vanilla_reference(benchmark, tiny_vlm):
    # Before the first update the model is its own reference: every log-ratio is 0.
    edit = _run("npo", benchmark, tiny_vlm(), extra={"beta": 0.4})
    assert edit.meta["losses"][0] == pytest.approx(2 / 0.4 * math.log(2), rel=1e-4)
    assert edit.meta["losses"][1] < edit.meta["losses"][0]  # NPO pushes the forget likelihood down


def test_npo_rejects_bad_reference_and_beta(benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match="reference must be 'vanilla' or a local checkpoint"):
        get_method("npo").unlearn(vlm, benchmark.forget_train[:4], [], MethodConfig(extra={"reference": str(tmp_path)}))
    with pytest.raises(ValueError, match="beta must be > 0"):
        get_method("npo").unlearn(vlm, benchmark.forget_train[:4], [], MethodConfig(extra={"beta": 0}))


def test_npo_reference_checkpoint_is_used(benchmark, tiny_vlm, tmp_path):
    # A reference checkpoint identical to the model gives the same first loss as 'vanilla'.
    vlm = tiny_vlm()
    vlm.save(tmp_path / "ref")
    edit = _run("npo", benchmark, vlm, extra={"reference": str(tmp_path / "ref")})
    assert edit.meta["losses"][0] == pytest.approx(2 / 0.4 * math.log(2), rel=1e-4)
    other = tiny_vlm(seed=1)  # another model as reference: the log-ratio is no longer 0
    other.save(tmp_path / "other")
    edit = _run("npo", benchmark, tiny_vlm(), extra={"reference": str(tmp_path / "other")})
    assert edit.meta["losses"][0] != pytest.approx(2 / 0.4 * math.log(2), rel=1e-3)


def test_kl_first_loss_has_zero_kl_term(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    # Same seed, same batches: at step 0 the KL to the frozen copy is 0, so KL's loss equals
    # GradDiff's (-NLL_f + NLL_r); after one update they differ.
    edit = _run("kl", benchmark, vlm)
    ga = _run("graddiff", benchmark, vlm)
    assert edit.meta["losses"][0] == pytest.approx(ga.meta["losses"][0], rel=1e-5)
    assert edit.meta["losses"][1] != pytest.approx(ga.meta["losses"][1], rel=1e-6)


def test_unknown_method_option_is_named(benchmark, tiny_vlm):
    with pytest.raises(ValueError, match="npo: unknown option.*betta.*beta, reference, retain_term"):
        get_method("npo").unlearn(tiny_vlm(), benchmark.forget_train[:4], [], MethodConfig(extra={"betta": 1}))


def test_cli_option_parsing():
    from mllm_unlearn.cli import parse_options

    assert parse_options(["beta=0.2", "reference=/x/y", "retain_term=true"]) == {
        "beta": 0.2, "reference": "/x/y", "retain_term": True}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_options(["beta"])


def test_masked_mse_ignores_padding():
    from mllm_unlearn.methods.rmu import masked_mse

    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[0.0, 2.0], [9.0, 9.0]]])
    target = torch.zeros_like(hidden)
    mask = torch.tensor([[1, 1], [1, 0]])
    # sequence 0: (1 + 9) / 2 = 5; sequence 1: only (0 + 4) / 2 = 2 -> batch mean 3.5
    assert masked_mse(hidden, target, mask).item() == pytest.approx(3.5)


def test_rmu_updates_only_the_selected_mlps(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    cfg = MethodConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False, extra={"layer": 1})
    edit = get_method("rmu").unlearn(vlm, benchmark.forget_train[:8], benchmark.retain_train[:8], cfg)
    changed = set(edit.tensors)
    assert changed and all(".layers.0.mlp." in n or ".layers.1.mlp." in n for n in changed), changed
    assert any(n.endswith("down_proj.weight") for n in changed) and any(n.endswith("up_proj.weight") for n in changed)
    cfg.extra["trainable"] = r".*layers\.1\.mlp\.down_proj\..*"  # WMDP's choice: the down projections only
    assert set(get_method("rmu").unlearn(vlm, benchmark.forget_train[:8], benchmark.retain_train[:8], cfg).tensors) \
        == {n for n in changed if ".layers.1.mlp.down_proj" in n}
    with pytest.raises(ValueError, match="trainable pattern 'nothing' matches no parameter"):
        get_method("rmu").unlearn(vlm, benchmark.forget_train[:8], benchmark.retain_train[:8],
                                  MethodConfig(max_steps=1, progress=False, extra={"trainable": "nothing"}))
    with pytest.raises(ValueError, match="layer must be in"):
        get_method("rmu").unlearn(vlm, benchmark.forget_train[:8], benchmark.retain_train[:8],
                                  MethodConfig(max_steps=1, progress=False, extra={"layer": 9}))


@pytest.mark.parametrize("name,extra", [("ga", {}), ("graddiff", {}), ("kl", {}), ("npo", {}), ("rmu", {"layer": 1})])
def test_every_gradient_method_trains_through_lora_and_hands_back_a_plain_model(benchmark, tiny_vlm, name, extra):
    from mllm_unlearn.interventions import LowRankDelta
    from mllm_unlearn.training.loop import LoraOptions

    vlm = tiny_vlm()
    state = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    edit = _run(name, benchmark, vlm, lora=LoraOptions(r=2, alpha=4), extra=extra)
    assert [n for n, _ in vlm.model.named_parameters()] == list(state)  # adapters gone
    assert all(torch.equal(p, state[n]) for n, p in vlm.model.named_parameters())  # base weights untouched
    # The edit is the factors; LoRA's default targets are the language model's linear layers.
    assert isinstance(edit, LowRankDelta) and edit.factors and edit.rank == 2
    assert all(".language_model.layers." in n and n.endswith("proj") for n in edit.factors)
    assert any(f["b"].abs().sum() > 0 for f in edit.factors.values())  # trained (B starts at zero)


def test_lora_target_that_matches_nothing_is_named(benchmark, tiny_vlm):
    from mllm_unlearn.training.loop import LoraOptions

    vlm = tiny_vlm()
    cfg = MethodConfig(max_steps=1, progress=False, lora=LoraOptions(target_modules=r".*nothing_here"))
    with pytest.raises(ValueError, match="LoRA target pattern '.\\*nothing_here' matches no linear layer"):
        get_method("ga").unlearn(vlm, benchmark.forget_train[:4], [], cfg)


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_edit(benchmark, tiny_vlm):
    from mllm_unlearn.methods.base import UnlearningDiverged

    vlm = tiny_vlm()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    method = get_method("ga")
    calls = []
    original = method.loss

    def loss(model, batch, cfg):
        calls.append(1)
        value = original(model, batch, cfg)
        return value * float("nan") if len(calls) == 3 else value

    method.loss = loss
    with pytest.raises(UnlearningDiverged, match="loss became nan at step 2") as caught:
        method.unlearn(vlm, benchmark.forget_train[:16], [], MethodConfig(max_steps=5, batch_size=4, lr=1e-3, progress=False))
    last_good = caught.value.last_good
    assert last_good.tensors and "step 2" in last_good.meta["stopped"]
    assert all(torch.isfinite(t).all() for t in last_good.tensors.values())
    assert all(torch.equal(p, before[n]) for n, p in vlm.model.named_parameters())  # model handed back untouched
    # The last good edit is two finite steps: the same as a clean two-step run.
    method.loss = original
    clean = method.unlearn(vlm, benchmark.forget_train[:16], [], MethodConfig(max_steps=2, batch_size=4, lr=1e-3, progress=False))
    assert sorted(clean.tensors) == sorted(last_good.tensors)
    assert all(torch.allclose(clean.tensors[n], last_good.tensors[n]) for n in clean.tensors)
