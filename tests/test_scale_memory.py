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
