import hashlib
import random

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import Steering, load_edit
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import _to
from mllm_unlearn.methods.mllmeraser import null_space_projector, perturb_pixels, steering_matrix
from mllm_unlearn.training.losses import sequence_nll


def _weights_hash(model):
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_projector_annihilates_the_retain_span_and_closed_form_is_pinned():
    retain = torch.tensor([[5.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])  # retain activations span e1
    second = retain.T @ retain / 2
    P = null_space_projector(second, energy=0.0)
    torch.testing.assert_close(P, torch.diag(torch.tensor([0.0, 1.0, 1.0])).double())
    assert torch.allclose(retain.double() @ P, torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(P @ P, P)
    assert int(round(float(torch.trace(null_space_projector(second, ratio=1 / 3))))) == 1

    forget = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # X = H_f P has rows e2, so XᵀX/n = e2e2ᵀ
    r = torch.tensor([0.5, -1.0, 2.0])
    args = (P, forget.sum(0), forget.T @ forget, 2, r)
    # λ = 0: W = e2 rᵀ exactly, so h_f W = r for both forget rows and h_r W = 0.
    W = steering_matrix(*args, ridge=0.0)
    torch.testing.assert_close(W, torch.outer(torch.tensor([0.0, 1.0, 0.0]), r))
    torch.testing.assert_close(forget @ W, r.expand(2, 3))
    assert torch.count_nonzero(retain @ W) == 0
    # λ = 2: m = tr(XᵀX/n)/rank P = 1/2, so the e2 eigenvalue is 1 + λm = 2 and h_f W = r / 2.
    torch.testing.assert_close(forget @ steering_matrix(*args, ridge=2.0), (r / 2).expand(2, 3))


def test_energy_threshold_keeps_the_smallest_directions_within_budget():
    second = torch.diag(torch.tensor([10.0, 1.0, 0.05, 0.01]))
    kept = lambda e: int(round(float(torch.trace(null_space_projector(second, energy=e)))))  # noqa: E731
    # trace 11.06: 0.01 ≤ 0.001·11.06; 0.06 ≤ 0.01·11.06; 1.06 ≤ 0.1·11.06
    assert (kept(0.0001), kept(0.001), kept(0.01), kept(0.1)) == (1, 1, 2, 3)
    with pytest.raises(ValueError, match="null_energy"):
        null_space_projector(second, energy=1.5)
    with pytest.raises(ValueError, match="null_ratio"):
        null_space_projector(second, ratio=1.0)


def test_unknown_and_bad_options_are_rejected_clearly(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    method = get_method("mllmeraser")
    with pytest.raises(ValueError, match="unknown option\\(s\\) strenght"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"strenght": 1}))
    with pytest.raises(ValueError, match="layers must be"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"layers": "0,5"}))
    with pytest.raises(ValueError, match="forms must be"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"forms": "cloze"}))
    with pytest.raises(ValueError, match="decode must be true or false"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"decode": "maybe"}))


def test_pgd_strengthens_recall_within_the_budget(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.forget_train if i.modality == "vqa"][:4]
    batch = _to(Encoder(vlm).batch(items, train=True), vlm.device)
    pixels = perturb_pixels(vlm.model, batch, steps=3, eps=0.1, step_size=0.05)
    assert float((pixels - batch["pixel_values"]).abs().max()) <= 0.1 + 1e-6
    with torch.no_grad():
        before = sequence_nll(vlm.model, batch)
        after = sequence_nll(vlm.model, {**batch, "pixel_values": pixels})
    assert bool((after < before).all()), (before, after)
    assert all(p.requires_grad for p in vlm.model.parameters())  # parameters unfrozen again


@pytest.mark.parametrize("family", ["llava", "qwen2.5-vl"])
def test_gate_steers_forget_inputs_and_leaves_retain_inputs_alone(family, benchmark, tiny_vlm, tmp_path):
    vlm = tiny_vlm(family)
    weights = _weights_hash(vlm.model)
    forget_people = set(benchmark.forget_ids)
    retain = [i for i in benchmark.retain_train + benchmark.pretrain_train]
    cfg = MethodConfig(batch_size=32, seed=0, extra={"layers": "all", "strength": 1.0, "pgd_steps": 1,
                                                     "null_energy": 0.001, "forms": "qa,mcq"})
    edit = get_method("mllmeraser").unlearn(vlm, benchmark.forget_train, retain, cfg)
    assert isinstance(edit, Steering) and edit.layers == [1] and _weights_hash(vlm.model) == weights

    encoder = Encoder(vlm)

    def norms(items):
        items = random.Random(0).sample(items, min(len(items), 48))
        batches = (_to(encoder.batch(items[k:k + 16], train=False), vlm.device) for k in range(0, len(items), 16))
        return float(edit.steering_norms(vlm, batches).mean())

    used = {"forget": norms(list(benchmark.forget_train)), "retain": norms(retain)}
    held_out = {"forget": norms([i for i in benchmark.eval_splits["forget"] if i.task == "mcq"]),
                "retain": norms([i for i in benchmark.eval_splits["retain"] if i.task == "mcq"]),
                "real_world": norms([i for i in benchmark.eval_splits["real_world"] if i.task == "mcq"])}
    print(f"\n{family} steering-vector norms: used to build {used}; held out {held_out}")
    assert used["retain"] <= 0.05 * used["forget"]
    assert held_out["retain"] <= 0.05 * held_out["forget"] and held_out["real_world"] <= 0.05 * held_out["forget"]
    assert all(i.person_id in forget_people for i in benchmark.forget_train)

    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    assert isinstance(loaded, Steering) and loaded.meta["method"] == "mllmeraser"
    assert all(torch.equal(loaded.matrices[k], edit.matrices[k]) for k in edit.layers)
