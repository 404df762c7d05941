"""MMUnlearner: saliency mask maths, Fisher accumulation, the mask restricting the update."""
import pytest
import torch

from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.mmunlearner import saliency_mask
from mllm_unlearn.training.fisher import diagonal_fisher


def test_saliency_mask_is_a_fisher_ratio_threshold():
    forget = {"w": torch.tensor([2.0, 1.0, 0.0, 1e-3])}
    preserve = {"w": torch.tensor([1.0, 2.0, 0.0, 0.0])}
    # ratios: 2, 0.5, (1e-15/1e-15)=1, huge
    assert saliency_mask(forget, preserve, 1.0)["w"].tolist() == [True, False, True, True]
    assert saliency_mask(forget, preserve, 3.0)["w"].tolist() == [False, False, False, True]
    # fp16 Fisher values are promoted to fp32 first: no 0/0 NaN, so an all-zero entry is kept.
    half = {"w": torch.zeros(2, dtype=torch.float16)}
    assert saliency_mask(half, half, 1.0)["w"].tolist() == [True, True]


def test_diagonal_fisher_is_the_mean_of_squared_minibatch_gradients():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    batches = [torch.randn(4, 3) for _ in range(3)]
    loss = lambda m, x: m(x).pow(2).mean()  # noqa: E731
    fisher = diagonal_fisher(model, batches, loss, {"weight": model.weight})
    expected = torch.zeros_like(model.weight)
    for x in batches:
        (grad,) = torch.autograd.grad(loss(model, x), model.weight)
        expected += grad ** 2 / len(batches)
    assert torch.allclose(fisher["weight"], expected)
    assert model.weight.grad is None


def test_mask_stops_any_change_to_masked_weights_and_outside_the_tower(benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    # retain_weight 0: only the masked ascent moves weights, over several AdamW steps.
    cfg = MethodConfig(max_steps=4, batch_size=4, lr=1e-2, retain_weight=0.0, progress=False,
                       extra={"mask": "language", "gamma": 1.0, "save_mask": str(tmp_path / "mask.safetensors")})
    method = get_method("mmunlearner")
    edit = method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg)
    from safetensors.torch import load_file

    mask = {n: t.bool() for n, t in load_file(str(tmp_path / "mask.safetensors")).items()}
    assert mask and all(".language_model.layers." in n for n in mask)
    stats = edit.meta["mmunlearner"]
    assert 0 < stats["masked_in"] < stats["mask_size"]
    for name, new in edit.tensors.items():
        assert name in mask, f"{name} is outside the masked tower but changed"
        changed = new != before[name]
        assert not (changed & ~mask[name]).any(), f"masked-out weights of {name} moved"
    assert any((new != before[n]).any() for n, new in edit.tensors.items())

    # The saved mask is reused as is, and a mask for another model is refused by name.
    reuse = MethodConfig(max_steps=1, batch_size=4, progress=False, extra={"mask_file": str(tmp_path / "mask.safetensors")})
    assert get_method("mmunlearner").unlearn(vlm, benchmark.forget_train, benchmark.retain_train, reuse).meta[
        "mmunlearner"]["masked_in"] == stats["masked_in"]
    bad = MethodConfig(max_steps=1, progress=False, extra={"mask_file": str(tmp_path / "mask.safetensors"), "mask": "vision"})
    with pytest.raises(ValueError, match="does not fit this model"):
        get_method("mmunlearner").unlearn(vlm, benchmark.forget_train, benchmark.retain_train, bad)


def test_bad_options_are_named(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match="mask must be one of"):
        get_method("mmunlearner").unlearn(vlm, benchmark.forget_train, benchmark.retain_train,
                                          MethodConfig(extra={"mask": "ears"}))
    text_only = [i for i in benchmark.forget_train if i.modality == "qa"]
    with pytest.raises(ValueError, match="no image \\+ question"):
        get_method("mmunlearner").unlearn(vlm, text_only, benchmark.retain_train, MethodConfig())


def test_lora_mask_confines_the_forget_update_and_retain_adapter_trains_apart(benchmark, tiny_vlm):
    from mllm_unlearn.training.loop import LoraOptions

    vlm = tiny_vlm()
    before = {n: p.detach().clone() for n, p in vlm.model.named_parameters()}
    method = get_method("mmunlearner")
    cfg = MethodConfig(max_steps=4, batch_size=4, lr=1e-2, retain_weight=0.0, progress=False, lora=LoraOptions(r=2, alpha=2),
                       extra={"mask": "language", "gamma": 1.0})
    captured = {}
    original_prepare = method.prepare

    def prepare(*args, **kwargs):
        original_prepare(*args, **kwargs)
        captured.update({n: m.detach().cpu().clone() for n, m in method.mask.items()})

    method.prepare = prepare
    edit = method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg)
    assert captured and edit.tensors
    # The model is handed back plain: no parametrization left, every weight as it was.
    assert [n for n, _ in vlm.model.named_parameters()] == list(before)
    assert all(torch.equal(p, before[n]) for n, p in vlm.model.named_parameters())
    for name, new in edit.tensors.items():
        assert name in captured, f"{name} is outside the masked tower but changed"
        changed = new != before[name]
        assert not (changed & ~captured[name]).any(), f"masked-out weights of {name} moved under LoRA"
    assert any((new != before[n]).any() for n, new in edit.tensors.items())

    # With the retain phase on, its (unmasked) adapter may move other weights too.
    cfg_retain = MethodConfig(max_steps=2, batch_size=4, lr=1e-2, progress=False, lora=LoraOptions(r=2, alpha=2),
                              extra={"mask": "language"})
    edit = get_method("mmunlearner").unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg_retain)
    assert any(((new != before[n]) & ~captured[n]).any() for n, new in edit.tensors.items())


def test_lora_target_that_matches_no_tower_layer_is_named(benchmark, tiny_vlm):
    from mllm_unlearn.training.loop import LoraOptions

    vlm = tiny_vlm()
    cfg = MethodConfig(max_steps=1, progress=False, lora=LoraOptions(target_modules=r".*no_such_proj"),
                       extra={"mask": "vision"})
    with pytest.raises(ValueError, match="matches no linear layer of the masked tower"):
        get_method("mmunlearner").unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg)
    assert not any("parametrizations" in n for n, _ in vlm.model.named_parameters())


@pytest.mark.parametrize("lora", [False, True])
def test_masks_are_bool_fishers_leave_for_cpu_and_the_edit_is_the_float_masks_one(benchmark, tiny_vlm, monkeypatch,
                                                                                    lora):
    from mllm_unlearn.methods import mmunlearner
    from mllm_unlearn.training.loop import LoraOptions

    fishers = []
    original_fisher = mmunlearner.diagonal_fisher

    def spy(*args, **kwargs):
        out = original_fisher(*args, **kwargs)
        fishers.append((kwargs.get("out_device"), {t.device.type for t in out.values()}))
        return out

    monkeypatch.setattr(mmunlearner, "diagonal_fisher", spy)

    def run(float_masks):
        method = get_method("mmunlearner")
        dtypes = set()
        original_prepare = method.prepare

        def prepare(*args, **kwargs):
            original_prepare(*args, **kwargs)
            if float_masks:  # the representation before masks were bool
                method.mask = {n: m.float() for n, m in method.mask.items()}
                for module in getattr(method, "adapted", {}).values():
                    module.parametrizations.weight[0].mask = module.parametrizations.weight[0].mask.float()
            dtypes.update(m.dtype for m in method.mask.values())
            dtypes.update(m.parametrizations.weight[0].mask.dtype for m in getattr(method, "adapted", {}).values())

        method.prepare = prepare
        cfg = MethodConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False,
                           lora=LoraOptions(r=2, alpha=2) if lora else None, extra={"mask": "language"})
        edit = method.unlearn(tiny_vlm(), benchmark.forget_train[:8], benchmark.retain_train[:8], cfg)
        return edit, dtypes

    edit, dtypes = run(float_masks=False)
    assert dtypes == {torch.bool}
    assert fishers and all(device == "cpu" and kinds == {"cpu"} for device, kinds in fishers)
    reference, reference_dtypes = run(float_masks=True)
    assert reference_dtypes == {torch.float32}
    base = {n: p.detach() for n, p in tiny_vlm().model.named_parameters()}
    new, old = edit.new_values(base), reference.new_values(base)
    assert new and sorted(new) == sorted(old)
    assert all(torch.allclose(new[n], old[n], rtol=1e-5, atol=0) for n in new)
