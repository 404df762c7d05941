"""The attack battery: each attack pinned on hand-made cases, the model restored exactly, the certificate's verdicts."""
from dataclasses import replace

import pytest
import torch

from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.eval.attacks import ATTACK_ORDER, ATTACKS, AttackConfig, build_certificate, parse_attacks, run_battery
from mllm_unlearn.eval.attacks.base import attack_evaluator, probe_sets
from mllm_unlearn.eval.attacks.logit_lens import lens_letter_logits
from mllm_unlearn.eval.attacks.prompt import PrefilledEncoder, same_person_demos
from mllm_unlearn.eval.attacks.quantization import quantized, quantized_linears, recovered_share, rtn_quantize
from mllm_unlearn.interventions import CompositeEdit, NeuronMask, Steering, WeightDelta
from mllm_unlearn.interventions.weight_delta import SparseSlices

from ..conftest import weights_hash

# Fast settings: the small world has 2 forget people; 2 control people, 2 relearning steps.
FAST = AttackConfig(control_people=2, benign_steps=2, benign_batch_size=4, batch_size=16, progress=False)


def test_4bit_rtn_of_a_known_tensor():
    weight = torch.tensor([[-0.3, 0.0, 0.44, 1.2],   # step 1.5 / 15 = 0.1, zero point 3: 0.44 -> 0.4
                           [0.0, 0.14, 0.26, 1.5],   # step 0.1, zero point 0: 0.14 -> 0.1, 0.26 -> 0.3
                           [0.5, 1.1, 2.0, 1.5]])    # all positive: the range is [0, 2], step 2 / 15
    expected = torch.tensor([[-0.3, 0.0, 0.4, 1.2],
                             [0.0, 0.1, 0.3, 1.5],
                             [4 * 2 / 15, 8 * 2 / 15, 2.0, 11 * 2 / 15]])
    assert torch.allclose(rtn_quantize(weight, bits=4, group_size=128), expected, atol=1e-6)
    # Symmetric 4-bit: step = max|w| / 7 = 0.1.
    sym = rtn_quantize(torch.tensor([[0.7, -0.33, 0.1, 0.06]]), bits=4, group_size=4, scheme="symmetric")
    assert torch.allclose(sym, torch.tensor([[0.7, -0.3, 0.1, 0.1]]), atol=1e-6)
    # Groups of 2 along each row: every pair is quantized on its own range.
    pairs = rtn_quantize(weight, bits=4, group_size=2)
    assert torch.allclose(pairs[1], torch.tensor([0.0, 0.14, 0.3, 1.5]), atol=1e-6)  # 0.14 is its group's top now
    assert torch.equal(pairs[:, :2], rtn_quantize(weight[:, :2], 4, group_size=2))


def test_rtn_groups_rows_and_a_short_last_group():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 10, generator=generator)
    whole = rtn_quantize(weight, 4, group_size=128)  # a row shorter than the group size is one group
    for row in range(3):
        assert torch.equal(whole[row:row + 1], rtn_quantize(weight[row:row + 1], 4, group_size=10))
    split = rtn_quantize(weight, 4, group_size=4)  # groups of 4, 4 and a last one of 2
    assert torch.equal(split[:, 8:], rtn_quantize(weight[:, 8:], 4, group_size=2))
    assert torch.equal(split[:, :4], rtn_quantize(weight[:, :4], 4, group_size=4))
    assert len(torch.unique(split[0, :4])) <= 4 and len(torch.unique(rtn_quantize(weight, 2, 10)[0])) <= 4
    assert torch.allclose(rtn_quantize(weight, 16, 10), weight, atol=1e-3)  # fine grids change little
    assert recovered_share(60.0, 30.0, 90.0) == 0.5 and recovered_share(20.0, 30.0, 90.0) == 0.0
    assert recovered_share(40.0, 90.0, 90.0) is None


def test_bitsandbytes_is_skipped_with_the_reason_without_cuda(tiny_vlm, benchmark):
    from mllm_unlearn.eval.attacks.quantization import bitsandbytes_available

    if bitsandbytes_available() is None:
        pytest.skip("CUDA and bitsandbytes are present: the NF4 variant runs (no skip to check)")
    vlm = tiny_vlm("llava")
    result = ATTACKS["quantization"].run(vlm, benchmark, None, replace(FAST, quant_bits=(4,), quant_bitsandbytes=True))
    assert result.figures["bitsandbytes_skipped"] == bitsandbytes_available()
    assert set(result.figures["variants"]) == {"quant_4bit"} and {r["stage"] for r in result.records} == {"unlearned"}


def test_parse_attacks():
    assert parse_attacks("all") == ATTACK_ORDER and parse_attacks("none") == ()
    assert parse_attacks("prompt, quantization") == ("quantization", "prompt")  # the battery's own order
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attacks("quantisation")


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_logit_lens_at_the_last_layer_is_the_models_own_output(family, tiny_vlm, benchmark):
    vlm = tiny_vlm(family)
    evaluator = attack_evaluator(vlm, FAST)
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:12]
    lens, own = lens_letter_logits(evaluator, items)
    letter_ids = list(evaluator.letter_ids.values())
    last = torch.stack([per_layer[-1] for per_layer in lens])
    assert len(lens[0]) == len(vlm.adapter.lm_layers(vlm.model))
    assert torch.allclose(last, own[:, letter_ids], atol=1e-4)
    letters = list(evaluator.letter_ids)
    plain = evaluator.score_group(items, "mcq")
    assert [letters[int(row.argmax())] for row in last] == [r["prediction"] for r in plain]


def test_an_empty_prefix_is_the_plain_evaluation(tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"]
    plain = attack_evaluator(vlm, FAST)
    empty = attack_evaluator(vlm, FAST, encoder=PrefilledEncoder(vlm, ""))
    assert empty.letter_ids == plain.letter_ids
    assert empty.encoder.prompt_text(items[0]) == plain.encoder.prompt_text(items[0])
    assert empty.letter_scores(items[:8]) == plain.letter_scores(items[:8])
    assert empty.score_group(items, "mcq") == plain.score_group(items, "mcq")
    prefixed = PrefilledEncoder(vlm, "the answer is")
    assert prefixed.prompt_text(items[0]).endswith("ASSISTANT: the answer is")
    assert prefixed.unknown_prefix_words() == [] and PrefilledEncoder(vlm, "Sure zzq").unknown_prefix_words() == ["Sure", "zzq"]


def test_in_context_demonstrations_are_the_persons_other_questions(benchmark):
    items = probe_sets(benchmark, FAST).forget
    demos = same_person_demos(items)
    for item in items:
        shown = demos(item)
        assert item not in shown and shown
        assert all(d.person_id == item.person_id and d.modality == item.modality for d in shown)


def _weight_edit(vlm) -> WeightDelta:
    """A stand-in unlearning edit: one decoder weight whole, one as rows, small moves."""
    params = dict(vlm.model.named_parameters())
    generator = torch.Generator().manual_seed(1)
    layers = vlm.adapter.lm_layers(vlm.model)
    whole = next(n for n, p in params.items() if p is layers[0].mlp.down_proj.weight)
    rows = next(n for n, p in params.items() if p is layers[1].self_attn.q_proj.weight)
    index = torch.tensor([0, 3])
    sparse = SparseSlices(0, index, params[rows].detach()[index] + 0.3, tuple(params[rows].shape))
    return WeightDelta({whole: params[whole].detach() + 0.05 * torch.randn(params[whole].shape, generator=generator)},
                       sparse={rows: sparse})


def _steering_edit(vlm) -> Steering:
    width = vlm.model.config.text_config.hidden_size
    generator = torch.Generator().manual_seed(2)
    return Steering({1: torch.randn(width, width, generator=generator) / width ** 0.5}, 0.5, meta={"method": "test"})


def _hooks(vlm) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vlm.model.modules()]


def _logits(vlm, items):
    with torch.no_grad():
        return vlm.model(**Encoder(vlm).batch(items, train=False)).logits


@pytest.mark.parametrize("kind", ["weights+mask", "steering"])
def test_every_attack_restores_the_model_exactly(kind, tiny_vlm, benchmark):
    vlm = tiny_vlm("llava")
    if kind == "steering":
        edit = _steering_edit(vlm)
    else:
        site = vlm.adapter.lm_ffn_sites(vlm.model)[0]
        mask = NeuronMask({site.module_path: torch.tensor([1, 2])}, {site.module_path: torch.zeros(2)})
        edit = CompositeEdit([mask, _weight_edit(vlm)])
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"][:6]
    before, weights, hooks = _logits(vlm, items), weights_hash(vlm.model), _hooks(vlm)
    for name in ATTACK_ORDER:
        result = ATTACKS[name].run(vlm, benchmark, edit, FAST)
        assert weights_hash(vlm.model) == weights, name
        assert torch.equal(_logits(vlm, items), before), name
        assert _hooks(vlm) == hooks, name  # no hook left behind
        assert result.records and {r["stage"] for r in result.records} == {"unlearned", "vanilla"}, name
        assert {r["group"] for r in result.records} == {"forget", "retain"}, name
    # The edit stays on during quantization: the quantized unlearned model differs from the quantized vanilla one.
    with quantized(vlm, edit, lambda w: rtn_quantize(w, 8), towers=False):
        edited_q = _logits(vlm, items)
    with quantized(vlm, None, lambda w: rtn_quantize(w, 8), towers=False):
        vanilla_q = _logits(vlm, items)
    assert not torch.allclose(edited_q, vanilla_q) and weights_hash(vlm.model) == weights
    assert len(quantized_linears(vlm, towers=True)) > len(quantized_linears(vlm, towers=False))


def test_a_failing_attack_is_recorded_and_the_battery_goes_on(tiny_vlm, benchmark, monkeypatch):
    vlm = tiny_vlm("llava")
    edit = _weight_edit(vlm)
    weights = weights_hash(vlm.model)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(ATTACKS["logit_lens"], "run", out_of_memory)
    seen, timings = [], {}
    out = run_battery(vlm, benchmark, edit, replace(FAST, attacks=("quantization", "logit_lens", "cross_modal")),
                      on_stage=lambda key, outcome: seen.append(key), timings=timings)
    assert seen == ["plain", "quantization", "logit_lens", "cross_modal", "certificate"]
    assert out["logit_lens"]["failed"]["error"] == "OutOfMemoryError"
    assert "records" in out["quantization"] and "records" in out["cross_modal"]
    candidates = out["cross_modal"]["figures"]["candidates"]
    named = [r for r in out["cross_modal"]["records"] if r["probe"] in ("portrait_to_name", "facts_to_name")]
    assert named and all(1 <= r["rank"] <= candidates for r in named)
    assert all(r["rank"] == 1 for r in named if r["correct"])  # a hit: the own name scored highest
    assert set(out["cross_modal"]["figures"]["mean_rank"]) == {"portrait_to_name", "facts_to_name"}
    assert out["certificate"]["attacks"] == ["quantization", "cross_modal"]
    assert set(timings) == {f"attack: {k}" for k in ("plain", "quantization", "logit_lens", "cross_modal")}
    assert weights_hash(vlm.model) == weights


def _records(probe, person, modality, right, total, stage="unlearned", group="forget", chance=25.0):
    return [{"probe": probe, "stage": stage, "group": group, "person_id": person, "modality": modality,
             "correct": k < right, "chance": chance} for k in range(total)]


def _control(stage_right_unlearned, people=("r1", "r2")):
    out = []
    for person in people:
        out += _records("plain", person, "vqa", 5, 5, stage="vanilla", group="retain")
        out += _records("plain", person, "vqa", stage_right_unlearned, 5, group="retain")
    return out


def test_certificate_verdicts_on_synthetic_records():
    cfg = AttackConfig()
    records = []
    for probe in ("plain", "quant_4bit", "prompt_prefix"):
        for person in ("f1", "f2", "f3"):
            records += _records(probe, person, "vqa", 5 if probe != "prompt_prefix" else 1, 5, stage="vanilla")
    records += _records("plain", "f1", "vqa", 1, 5) + _records("quant_4bit", "f1", "vqa", 1, 5)  # forgotten
    records += _records("plain", "f2", "vqa", 1, 5) + _records("quant_4bit", "f2", "vqa", 5, 5)  # quantization recalls
    records += _records("plain", "f3", "vqa", 2, 5) + _records("quant_4bit", "f3", "vqa", 3, 5)  # 40/60%: p > 0.05
    for person in ("f1", "f2", "f3"):  # the vanilla model fails the prefix probe: it cannot count
        records += _records("prompt_prefix", person, "vqa", 5, 5)
    certificate = build_certificate(records + _control(5), cfg, ["f1", "f2", "f3"], {"f1": "Ann Bee"})
    people = certificate["people"]
    assert people["f1"]["modalities"]["vqa"]["verdict"] == "forgotten" and people["f1"]["name"] == "Ann Bee"
    assert people["f2"]["modalities"]["vqa"] == {**people["f2"]["modalities"]["vqa"], "verdict": "still known",
                                                 "still_recalls": ["quant_4bit"]}
    assert people["f3"]["modalities"]["vqa"]["verdict"] == "forgotten"  # 3 of 5 at chance 25%: p = 0.10
    assert people["f3"]["modalities"]["vqa"]["probes"]["quant_4bit"]["p_value"] == pytest.approx(0.103515625)
    assert certificate["uninformative"]["vqa"] == ["prompt_prefix"]
    assert people["f1"]["modalities"]["vqa"]["probes"]["prompt_prefix"]["recalls"]  # recalls, but not counted
    assert certificate["summary"]["vqa"] == {**certificate["summary"]["vqa"], "forgotten": 2, "still_known": 1,
                                             "undetermined": 0, "people": 3}
    assert certificate["probes"]["prompt_prefix"]["vqa"]["vanilla_items"] == 15
    assert certificate["control"]["modalities"]["vqa"]["passed"] and not certificate["model_broken"]

    broken = build_certificate(records + _control(1), cfg, ["f1", "f2", "f3"])
    assert broken["model_broken"] and broken["control"]["modalities"]["vqa"]["passed"] is False
    assert broken["summary"]["vqa"]["verdict"].startswith("model broken, not unlearned")
    # A looser rule (no significance test) flags 2 and 3 of 5 right (40%, 60% > chance + 10).
    loose = build_certificate(records + _control(5), replace(cfg, alpha=1.0), ["f1", "f2", "f3"])
    assert loose["people"]["f3"]["modalities"]["vqa"]["still_recalls"] == ["plain", "quant_4bit"]


def test_certificate_is_undetermined_when_no_probe_is_informative():
    """The issue's QA case: the vanilla model never knew the people (every probe uninformative), so
    nobody is "forgotten" (it was never tested), however low the unlearned model's accuracy."""
    records = []
    for probe in ("plain", "quant_4bit"):
        for person in ("f1", "f2"):
            records += _records(probe, person, "qa", 1, 4, stage="vanilla") + _records(probe, person, "qa", 0, 4)
    certificate = build_certificate(records, AttackConfig(), ["f1", "f2"])
    assert certificate["uninformative"]["qa"] == ["plain", "quant_4bit"]
    assert certificate["summary"]["qa"] == {**certificate["summary"]["qa"], "forgotten": 0, "still_known": 0,
                                            "undetermined": 2, "people": 2}
    cell = certificate["people"]["f1"]["modalities"]["qa"]
    assert cell["verdict"] == "undetermined" and cell["reason"].startswith("no informative probe")
    from mllm_unlearn.report.attacks import certificate_lines, certificate_rows

    lines = certificate_lines(certificate)
    assert lines[0] == "Verdicts: QA 0 forgotten, 0 still known, 2 undetermined (of 2)."
    assert lines[1].startswith("Undetermined (2): ") and "no evidence of forgetting" in lines[1]
    assert certificate_rows(certificate) == [["f1", "–", "undetermined"], ["f2", "–", "undetermined"]]


def test_certificate_is_undetermined_with_four_questions_at_a_vanilla_recall_of_75_percent():
    """The issue's VQA case: 4 questions per person, the vanilla model right on 3 of 4 of everyone's
    (75%, informative: 12 of 16 pooled, p < 0.001): only 4 of 4 right passes p <= 0.05, which a person
    still known at 75% reaches a third of the time, so 0 of 4 right is no evidence of forgetting."""
    people = ["f1", "f2", "f3", "f4"]
    records = []
    for person in people:
        records += _records("plain", person, "vqa", 3, 4, stage="vanilla")
    records += _records("plain", "f1", "vqa", 0, 4) + _records("plain", "f2", "vqa", 1, 4)
    records += _records("plain", "f3", "vqa", 4, 4) + _records("plain", "f4", "vqa", 2, 4)
    certificate = build_certificate(records, AttackConfig(), people)
    assert certificate["probes"]["plain"]["vqa"]["informative"]
    verdicts = {p: certificate["people"][p]["modalities"]["vqa"]["verdict"] for p in people}
    assert verdicts == {"f1": "undetermined", "f2": "undetermined", "f3": "still known", "f4": "undetermined"}
    probe = certificate["people"]["f1"]["modalities"]["vqa"]["probes"]["plain"]
    assert probe["power"] == pytest.approx(0.75 ** 4) and "power 0.32" in probe["reason"]
    assert certificate["summary"]["vqa"]["undetermined"] == 3 and certificate["summary"]["vqa"]["forgotten"] == 0


def test_quantization_undoes_an_edit_that_stays_inside_its_rounding_bins(tiny_vlm, benchmark):
    """Positive control of the quantization attack: an edit that moves every quantized weight less than half a
    4-bit step (what gradient ascent at a tiny learning rate does) changes the model's answers, and 4-bit
    quantization snaps it back onto the vanilla model's grid: the quantized unlearned model answers exactly as
    the quantized vanilla one."""
    vlm = tiny_vlm("llava")
    cfg = replace(FAST, quant_bits=(4,), quant_scheme="symmetric")

    def quantize(weight):
        return rtn_quantize(weight, 4, cfg.quant_group_size, "symmetric")

    def inside_the_bin(weight):
        """Each weight moved to the far side of its rounding bin (0.45 of a step from its grid value, away from
        it), each row's largest magnitude (which sets the step) left alone: every weight rounds as before."""
        w = weight.detach()
        grid = quantize(w)
        step = w.abs().amax(dim=1, keepdim=True) / 7  # one group per row here (rows narrower than 128)
        side = torch.where(w >= grid, 1.0, -1.0)
        moved = grid + 0.45 * step * side
        return torch.where(w.abs() == w.abs().amax(dim=1, keepdim=True), w, moved)

    names = {id(p): n for n, p in vlm.model.named_parameters()}
    edit = WeightDelta({names[id(m.weight)]: inside_the_bin(m.weight) for m in quantized_linears(vlm, False).values()})
    items = [i for i in benchmark.eval_splits["forget"] if i.task == "mcq"]
    vanilla = _logits(vlm, items)
    with edit.applied(vlm):
        unlearned = _logits(vlm, items)
    evaluator = attack_evaluator(vlm, cfg)
    plain = [r["prediction"] for r in evaluator.score_group(items, "mcq")]
    with edit.applied(vlm):
        edited = [r["prediction"] for r in evaluator.score_group(items, "mcq")]
    assert plain != edited and (vanilla - unlearned).abs().max() > 0.05  # the edit changes the model's answers
    with quantized(vlm, edit, quantize, towers=False):
        unlearned_q = _logits(vlm, items)
    with quantized(vlm, None, quantize, towers=False):
        vanilla_q = _logits(vlm, items)
    assert torch.allclose(unlearned_q, vanilla_q, atol=1e-4)  # quantization undid it
    records = ATTACKS["quantization"].run(vlm, benchmark, edit, cfg).records
    answers = {stage: [r["correct"] for r in records if r["stage"] == stage] for stage in ("unlearned", "vanilla")}
    assert answers["unlearned"] == answers["vanilla"] and len(answers["vanilla"]) > 10
