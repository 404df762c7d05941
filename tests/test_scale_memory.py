"""benchmarks/scale_memory.py: the real 7B configurations and the fit that predicts their peak.

(The script's own CPU run takes minutes and is a benchmark, not a test; its --help is checked
in test_benchmarks.py.)"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scale_memory.py"


@pytest.fixture(scope="module")
def scale_memory():
    spec = importlib.util.spec_from_file_location("scale_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_memory"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("scale_memory", None)


def test_the_written_configs_are_the_real_7b_models(scale_memory):
    # LLaVA-1.5-7B: 7.06 B parameters; Qwen2.5-VL-7B: 8.29 B (counted on the meta device)
    assert round(scale_memory.parameter_count("llava") / 1e9, 2) == 7.06
    assert round(scale_memory.parameter_count("qwen2.5-vl") / 1e9, 2) == 8.29
    assert scale_memory.shape_of(scale_memory.real_config("qwen2.5-vl")) == {"d": 3584, "L": 28, "V": 152064,
                                                                             "dv": 1280, "Lv": 32}


def test_scaled_down_configs_keep_the_architecture_ratios(scale_memory):
    size = scale_memory.tiny_size("qwen2.5-vl", scale_memory.Shape(256, 4, 2))
    assert size.hidden == 256 and size.heads == 8 and size.layers == 4
    assert abs(size.ffn / size.hidden - 18944 / 3584) < 0.05  # Qwen's 5.3x FFN
    assert size.vision_layers == 5 and size.vision_hidden % size.vision_heads == 0


def test_the_fit_recovers_known_coefficients_and_predicts(scale_memory):
    truth = [16.0, 3.0, 4.0, 2e8]  # bytes per parameter, per activation unit, per logit, constant
    shapes = [(64, 2, 100), (128, 2, 100), (256, 2, 100), (128, 4, 100), (128, 2, 200)]
    points = []
    for d, layers, tokens in shapes:
        features = {"parameters": 2 * 32064 * d + 12 * d * d * layers, "tokens": tokens, "d": d, "L": layers,
                    "dv": d // 4, "Lv": layers, "V": 32064}
        points.append((features, scale_memory.predict(truth, features)))
    coefficients = scale_memory.fit(points)
    assert coefficients == pytest.approx(truth, rel=1e-6)
    assert scale_memory.fit(points[:3]) is None  # fewer points than unknowns: no prediction


def test_the_activation_law_fit_recovers_a_known_linear_law(scale_memory):
    truth = [20.0, 12.0, 6.0, 4.0, 3e5]  # bytes per T·d·L, P·dv·Lv, T_ans·V, T·d, constant
    points = []
    for d, layers, tokens, patches, answer in [(64, 2, 84, 65, 8), (128, 2, 84, 65, 8), (64, 4, 84, 65, 8),
                                               (64, 2, 168, 130, 16), (64, 2, 276, 257, 8), (128, 4, 330, 290, 16)]:
        features = {"tokens": tokens, "patches": patches, "answer_tokens": answer, "d": d, "L": layers,
                    "dv": d // 4, "Lv": max(2, round(layers * 0.75)), "V": 32064}
        points.append((features, scale_memory.law_predict(truth, features)))
    coefficients, residual = scale_memory.fit_law(points)
    assert coefficients == pytest.approx(truth, rel=1e-6)
    assert residual < 1e-9
    assert scale_memory.fit_law(points[:4]) is None  # fewer points than unknowns


def test_the_static_accounting_of_llava_7b_matches_hand_computed_bytes(scale_memory):
    cases = scale_memory.static_accounting("llava")
    total = scale_memory.parameter_count("llava")
    # LoRA r=16 on q,k,v,o (4096→4096), gate, up (4096→11008), down (11008→4096), 32 layers
    lora = 32 * 16 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert lora == 39_976_960
    per_trained = 4 + 4 + 8 + 2  # fp32 master, fp32 grad, AdamW's two moments, autocast bf16 copy
    assert cases[("ga", "lora")]["trained"] == lora
    assert cases[("ga", "lora")]["static"] == 2 * total + per_trained * lora
    assert cases[("ga", "full")]["static"] == per_trained * total  # every bf16 weight became an fp32 master
    assert cases[("kl", "full")]["static"] == per_trained * total + 2 * total  # + the frozen bf16 copy
    # RMU full: the MLPs of layers 5-7 (gate, up, down: 3 × 4096 × 11008 each)
    assert cases[("rmu", "full")]["trained"] == 3 * 3 * 4096 * 11008
    # FSDP divides the model's bytes, not the frozen reference
    assert cases[("kl", "full")]["shardable"] == per_trained * total


def test_the_batch_that_fits_respects_every_phase(scale_memory):
    gb = 10 ** 9
    # training: 20 GB static + 5 GB per sample -> 12 samples; a Fisher pass at 50 GB + 4 GB -> 7
    assert scale_memory.batch_that_fits([(20 * gb, 5 * gb)]) == 12
    assert scale_memory.batch_that_fits([(20 * gb, 5 * gb), (50 * gb, 4 * gb)]) == 7
    assert scale_memory.batch_that_fits([(90 * gb, 1 * gb)]) == 0  # the static bytes alone do not fit
