import random
from dataclasses import replace

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import RandomFeatures, Steering, load_edit
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.methods.base import to_device
from mllm_unlearn.methods.mllmeraser import Moments, null_space_projector, perturb_pixels, steering_matrix
from mllm_unlearn.models.tiny import build_tiny_vlm
from mllm_unlearn.recipes.inject import McqRenderer
from mllm_unlearn.training.losses import sequence_nll

from ..conftest import SMALL_SIZE, weights_hash


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


def test_moments_stream_lifted_rows_in_chunks_and_match_the_direct_sums(monkeypatch):
    monkeypatch.setattr(Moments, "flush_rows", 5)  # several folds and a pending remainder
    generator = torch.Generator().manual_seed(0)
    states = [torch.randn(3, 6, generator=generator) for _ in range(4)]  # 12 rows of width 6
    lift = RandomFeatures.draw(torch.zeros(6), 1.5, 16, seed=0)
    plain, lifted = Moments(), Moments(features={1: lift})
    for h in states:
        plain.add({0: h})
        lifted.add({1: h})
    rows = torch.cat(states).double()
    torch.testing.assert_close(plain.outer[0], rows.T @ rows)
    torch.testing.assert_close(plain.mean(0), rows.mean(0))
    features = lift(torch.cat(states)).double()
    torch.testing.assert_close(lifted.outer[1], features.T @ features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lifted.sum[1], features.sum(0), rtol=1e-5, atol=1e-5)
    assert lifted.count == plain.count == 12
    assert abs(plain.spread(0) - float(rows.var(0, unbiased=False).mean()) ** 0.5) < 1e-9


def test_prompt_forms_are_the_open_question_its_generation_prompt_and_fresh_multiple_choices(benchmark):
    from mllm_unlearn.data.synthetic import GENERATION_INSTRUCTION
    from mllm_unlearn.methods.mllmeraser import MLLMEraser
    from mllm_unlearn.recipes.inject import McqRenderer

    items = list(benchmark.forget_train[:3])
    renderer = McqRenderer(list(benchmark.forget_train) + list(benchmark.retain_train), 0)
    assert all(renderer.renderable(i) for i in items)
    prompts = MLLMEraser.inference_prompts(items, ["qa", "generation", "mcq"], renderer, renderings=2)
    assert prompts[:3] == items
    assert [p.question for p in prompts[3:6]] == [f"{i.question}\n{GENERATION_INSTRUCTION}" for i in items]
    choices = prompts[6:]
    assert len(choices) == 6 and all(p.task == "mcq" and len(p.options) == 4 for p in choices)
    assert [c.options for c in choices[:3]] != [c.options for c in choices[3:]]  # each rendering draws afresh
    from mllm_unlearn.data.synthetic import CLOZE_INSTRUCTION

    cloze = MLLMEraser.inference_prompts(items, ["cloze"], renderer)
    assert len(cloze) == 3 and all(p.question.endswith(CLOZE_INSTRUCTION) and "[Blank]" in p.question for p in cloze)
    assert [p.answer for p in cloze] == [i.meta["Value"] for i in items]


def test_unknown_and_bad_options_are_rejected_clearly(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    method = get_method("mllmeraser")
    with pytest.raises(ValueError, match="unknown option\\(s\\) strenght"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"strenght": 1}))
    with pytest.raises(ValueError, match="layers must be"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"layers": "0,5"}))
    with pytest.raises(ValueError, match="forms must be"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"forms": "fill-in"}))
    with pytest.raises(ValueError, match="retain_forms must be"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"retain_forms": ""}))
    with pytest.raises(ValueError, match="decode must be true or false"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"decode": "maybe"}))
    with pytest.raises(ValueError, match="task_strengths names unknown task 'vqa'"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"task_strengths": "vqa=1"}))
    with pytest.raises(ValueError, match="task_strengths must be TASK=STRENGTH"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"task_strengths": "cloze"}))
    with pytest.raises(ValueError, match="renderings must be >= 1"):
        method.unlearn(vlm, benchmark.forget_train, benchmark.retain_train, MethodConfig(extra={"renderings": 0}))


def test_pgd_strengthens_recall_within_the_budget(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.forget_train if i.modality == "vqa"][:4]
    batch = to_device(Encoder(vlm).batch(items, train=True), vlm.device)
    pixels = perturb_pixels(vlm.model, batch, steps=3, eps=0.1, step_size=0.05)
    assert float((pixels - batch["pixel_values"]).abs().max()) <= 0.1 + 1e-6
    with torch.no_grad():
        before = sequence_nll(vlm.model, batch)
        after = sequence_nll(vlm.model, {**batch, "pixel_values": pixels})
    assert bool((after < before).all()), (before, after)
    assert all(p.requires_grad for p in vlm.model.parameters())  # parameters unfrozen again


WIDE = 512  # LM width of the gate test's model (see the test's docstring)
# The gate's figures below were measured on the test model with one vision layer (whose image
# features LLaVA then reads straight from the embeddings); tests/conftest.py's SMALL_SIZE now has
# two. The gate is about the LM's width, so the test keeps the model its figures describe.
GATE_SIZE = replace(SMALL_SIZE, hidden=WIDE, vision_layers=1)
# Held-out items (the evaluation's multiple-choice prompts, with the benchmark's own options)
# are gated less sharply than the items the edit was built from. With one multiple-choice
# rendering per item the held-out retain ratio was 5.0%; four renderings (fresh options each)
# cover the option texts' variation: 4.2% retain, 3.0% real-world (2.2% on the build items).
# On the world whose test statements are paraphrased (its vocabulary, hence the random init,
# changed) held-out retain reads 0.034 / 0.673 = 5.1%: the bound means "about an order of magnitude".
HELD_OUT_RATIO = 0.06
# The lifted-gate test (64-wide model, soft gate): held-out retain/forget steering norm 0.185 with
# the linear gate, 0.058 with the states lifted to 1024 random ReLU features.
LIFT = 1024
LIFTED_RATIO = 0.1


def _mean_steering_norm(edit, vlm, encoder, items, count=48):
    """Mean norm of the edit's steering vectors over a seeded sample of ``count`` inputs."""
    items = random.Random(0).sample(list(items), min(len(items), count))
    batches = (to_device(encoder.batch(items[k:k + 16], train=False), vlm.device) for k in range(0, len(items), 16))
    return float(edit.steering_norms(vlm, batches).mean())


def _gate_norms(edit, vlm, encoder, benchmark, used_items, label):
    """Mean steering norms on the prompts the edit was built from (``used_items``: forget and
    retain) and on held-out evaluation MCQs (forget, retain, real-world), printed with their ratios."""
    used = {name: _mean_steering_norm(edit, vlm, encoder, items) for name, items in used_items.items()}
    held_out = {split: _mean_steering_norm(edit, vlm, encoder, [i for i in benchmark.eval_splits[split] if i.task == "mcq"])
                for split in ("forget", "retain", "real_world")}
    print(f"\n{label}: steering norms used to build {used} (retain/forget {used['retain'] / used['forget']:.3f}); "
          f"held out {held_out} (retain/forget {held_out['retain'] / held_out['forget']:.3f}, real_world/forget "
          f"{held_out['real_world'] / held_out['forget']:.3f})")
    return used, held_out


def test_gate_steers_forget_inputs_and_leaves_retain_inputs_alone(benchmark, words, tmp_path):
    """The null-space gate needs a hidden space wider than what the retain activations fill: with
    the 64-wide test model (and the 128-wide default one) the retain people's last-token states
    span it and retain inputs get ~40-85% of the forget inputs' steering. Here the LM is 512 wide
    (a 7B model is 4096 wide for ~500 MLLMU-Bench people)."""
    vlm = build_tiny_vlm("llava", words, GATE_SIZE, seed=0)
    weights = weights_hash(vlm.model)
    retain = list(benchmark.retain_train) + list(benchmark.pretrain_train)
    cfg = MethodConfig(batch_size=32, seed=0, extra={"layers": "all", "strength": 1.0, "pgd_steps": 1,
                                                     "null_energy": 1.0, "retain_penalty": 1000, "ridge": 1e-4,
                                                     "renderings": 4})
    edit = get_method("mllmeraser").unlearn(vlm, benchmark.forget_train, retain, cfg)
    assert isinstance(edit, Steering) and edit.layers == [1] and weights_hash(vlm.model) == weights

    encoder = Encoder(vlm)
    used, held_out = _gate_norms(edit, vlm, encoder, benchmark,
                                 {"forget": list(benchmark.forget_train), "retain": retain}, f"linear gate, LM width {WIDE}")
    assert used["retain"] <= 0.05 * used["forget"]
    assert held_out["retain"] <= HELD_OUT_RATIO * held_out["forget"]
    assert held_out["real_world"] <= HELD_OUT_RATIO * held_out["forget"]

    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    assert isinstance(loaded, Steering) and loaded.meta["method"] == "mllmeraser"
    assert all(torch.equal(loaded.matrices[k], edit.matrices[k]) for k in edit.layers)


def test_lifted_gate_is_saved_with_its_features_and_separates_better_on_a_narrow_model(benchmark, tiny_vlm, tmp_path):
    """The 64-wide test model's retain states fill its hidden space (see the test above); a random
    ReLU lift of the gate's input gives the closed form room to map retain inputs to ~0."""
    vlm = tiny_vlm("llava")
    weights = weights_hash(vlm.model)
    retain = list(benchmark.retain_train) + list(benchmark.pretrain_train)
    base = {"layers": "all", "strength": 1.0, "pgd_steps": 1, "null_energy": 1.0, "retain_penalty": 1000,
            "ridge": 0.01, "forms": "mcq", "renderings": 2}
    method = get_method("mllmeraser")
    encoder = Encoder(vlm)
    held_out = {split: random.Random(0).sample(mcq := [i for i in benchmark.eval_splits[split] if i.task == "mcq"], min(48, len(mcq)))
                for split in ("forget", "retain")}

    def ratio(edit):
        return (_mean_steering_norm(edit, vlm, encoder, held_out["retain"])
                / _mean_steering_norm(edit, vlm, encoder, held_out["forget"]))

    linear = method.unlearn(vlm, benchmark.forget_train, retain, MethodConfig(batch_size=32, seed=0, extra=base))
    lifted = method.unlearn(vlm, benchmark.forget_train, retain,
                            MethodConfig(batch_size=32, seed=0, extra={**base, "lift": LIFT}))
    assert weights_hash(vlm.model) == weights and not linear.features
    hidden = vlm.model.config.text_config.hidden_size
    assert set(lifted.features) == set(lifted.layers) == {1}
    assert lifted.features[1].width == LIFT and tuple(lifted.matrices[1].shape) == (LIFT, hidden)
    assert set(lifted.factors) == {1}  # the closed form's W = w·rᵀ is applied as two vectors
    linear_ratio, lifted_ratio = ratio(linear), ratio(lifted)
    print(f"\nheld-out retain/forget steering norm, LM width {hidden}: linear gate {linear_ratio:.3f}, "
          f"lifted to {LIFT} features {lifted_ratio:.3f}")
    assert lifted_ratio <= LIFTED_RATIO < linear_ratio

    lifted.save(tmp_path / "lifted")
    loaded = load_edit(tmp_path / "lifted")
    assert torch.equal(loaded.features[1].proj, lifted.features[1].proj)
    assert loaded.features[1].scale == lifted.features[1].scale
    assert ratio(loaded) == lifted_ratio
    with pytest.raises(ValueError, match="lift must be 0"):
        method.unlearn(vlm, benchmark.forget_train, retain, MethodConfig(extra={"lift": -1}))


def test_mean_pooled_lifted_gate_keeps_retain_inputs_under_five_percent_on_a_narrow_model(benchmark, tiny_vlm,
                                                                                          tmp_path):
    """Issue 5's gate criterion on the 64-wide test model: with the gate reading the mean of the
    prompt's states (``pool="mean"``) through the random lift, the mean steering norm on retain
    and real-world inputs is <= 5% of that on forget inputs, for the prompts the edit was built
    from and for held-out evaluation prompts (the last position gives 5-20%: the test above)."""
    vlm = tiny_vlm("llava")
    retain = list(benchmark.retain_train) + list(benchmark.pretrain_train)
    extra = {"layers": "all", "strength": 1.0, "pgd_steps": 1, "null_energy": 1.0, "retain_penalty": 1000,
             "ridge": 0.01, "forms": "mcq", "renderings": 2, "lift": LIFT, "pool": "mean"}
    edit = get_method("mllmeraser").unlearn(vlm, benchmark.forget_train, retain,
                                            MethodConfig(batch_size=32, seed=0, extra=extra))
    assert edit.pool == "mean"
    encoder = Encoder(vlm)
    renderer = McqRenderer(list(benchmark.forget_train) + retain, 0)
    used_items = {name: [renderer(i) for i in items if renderer.renderable(i)]
                  for name, items in (("forget", benchmark.forget_train), ("retain", retain))}
    used, held_out = _gate_norms(edit, vlm, encoder, benchmark, used_items,
                                 f"mean-pooled lifted gate, LM width {vlm.model.config.text_config.hidden_size}")
    assert used["retain"] <= 0.05 * used["forget"]
    assert held_out["retain"] <= 0.05 * held_out["forget"]
    assert held_out["real_world"] <= 0.05 * held_out["forget"]
    edit.save(tmp_path / "pooled")
    assert load_edit(tmp_path / "pooled").pool == "mean"
    with pytest.raises(ValueError, match="pool must be one of"):
        get_method("mllmeraser").options(vlm, MethodConfig(extra={"pool": "max"}))
