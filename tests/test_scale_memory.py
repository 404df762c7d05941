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


# --- the corrected law terms, --model on a user's config ---------------------------------------
def test_a_frozen_vision_tower_is_charged_nothing(scale_memory):
    config = scale_memory.real_config("llava")
    lora = scale_memory.law_row(scale_memory.target_features("llava", 4, config, "ga", "lora"))
    full = scale_memory.law_row(scale_memory.target_features("llava", 4, config, "ga", "full"))
    assert lora[1] == 0.0  # LoRA adapts the language model only: no gradient reaches the tower
    assert full[1] == 4 * 577 * 1024 * 24  # full fine-tuning trains the tower: patches × d_v × L_v
    assert scale_memory.activation_scope("mmunlearner", "full", 32)["vision"] == 0  # paper mask: language
    assert scale_memory.activation_scope("mllmeraser", "-", 32)["vision"] == 1  # PGD on the pixels


def test_rmu_is_charged_only_the_blocks_that_save_activations(scale_memory):
    # paper preset: loss at layer 7, forwards stop there; full fine-tuning trains the MLPs of 5-7
    assert scale_memory.activation_scope("rmu", "full", 32) == {"lm_layers": 3, "vision": 0, "logits": 0}
    assert scale_memory.activation_scope("rmu", "lora", 32)["lm_layers"] == 8  # adapters on blocks 0..7
    assert scale_memory.activation_scope("rmu", "lora", 4)["lm_layers"] == 4  # layer clamped to the depth
    f = scale_memory.target_features("llava", 4, scale_memory.real_config("llava"), "rmu", "full")
    assert scale_memory.law_row(f)[0] == f["tokens"] * 4096 * 3
    assert scale_memory.law_row(f)[2] == 0.0  # the loss reads hidden states, not logits


def test_a_degenerate_fit_is_flagged(scale_memory):
    # every shape with the same depth: T·d·L is T·d times a constant, the columns are dependent
    points = [({"tokens": t, "patches": t, "answer_tokens": 8, "d": d, "L": 2, "dv": d // 4, "Lv": 2, "V": 100,
                "vision": 0}, 10.0 * t * d) for t, d in [(80, 64), (100, 64), (80, 128), (120, 96), (90, 64), (70, 32)]]
    coefficients, _ = scale_memory.fit_law(points)
    assert "columns not independent on these shapes" in scale_memory.law_degeneracy(points, coefficients)


def _law_file(scale_memory, path, truth):
    """Measurements following a known law exactly, for every case of the LLaVA family."""
    rows = []
    for method, mode in scale_memory.method_modes(list(scale_memory.GRADIENT_METHODS + scale_memory.OTHER_METHODS)):
        for checkpointing in (True, False):
            for s in scale_memory.LAW_SHAPES:
                f = {"tokens": s.batch * (s.grid ** 2 + 20), "answer_tokens": 8 * s.batch,
                     "patches": s.batch * (s.grid ** 2 + 1), "batch": s.batch, "d": s.hidden, "L": s.layers,
                     "V": 32064, "dv": s.hidden // 4, "Lv": max(2, round(s.layers * 0.75))}
                scoped = {**f, **scale_memory.activation_scope(method, mode, s.layers)}
                rows.append({"family": "llava", "method": method, "mode": mode, "checkpointing": checkpointing,
                             "features": f, "saved_bytes": scale_memory.law_predict(truth, scoped)})
    path.write_text(__import__("json").dumps({"law_measurements": rows}))


def test_model_option_predicts_for_a_users_config(scale_memory, tmp_path, capsys):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=10,
                       num_attention_heads=4, num_key_value_heads=4)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                              image_size=112, patch_size=14)
    LlavaConfig(vision_config=vision, text_config=text, image_token_index=999).to_json_file(tmp_path / "config.json")
    truth = [20.0, 12.0, 6.0, 4.0, 3e5]
    law = tmp_path / "law.json"
    _law_file(scale_memory, law, truth)

    family, config = scale_memory.load_model_config(str(tmp_path))
    rows = scale_memory.load_law(law, "llava")
    predictions = {(p["method"], p["mode"]): p for p in scale_memory.predict_model(rows, family, config, ["ga", "rmu"],
                                                                                    ("lora", "full"))}
    tokens, answer = 4 * (64 + 60), 4 * 24  # 112/14 = 8: 64 image tokens a sample, 65 patches
    no_ckpt = truth[0] * tokens * 256 * 10 + truth[2] * answer * 1000 + truth[3] * tokens * 256 + truth[4]
    assert predictions[("ga", "lora")]["activation_off"] == pytest.approx(no_ckpt, rel=1e-6)  # no vision term
    rmu = truth[0] * tokens * 256 * 3 + truth[3] * tokens * 256 + truth[4]  # blocks 5-7 only, no logits
    assert predictions[("rmu", "full")]["activation_off"] == pytest.approx(rmu, rel=1e-6)
    assert predictions[("ga", "full")]["activation_off"] > no_ckpt  # the trained tower is charged

    assert scale_memory.main(["--model", str(tmp_path / "config.json"), "--law", str(law), "--gpu-gib", "0.01",
                              "--methods", "ga,kl"]) == 0
    out = capsys.readouterr().out
    assert "family llava" in out and "| ga | lora |" in out and "| kl | full |" in out
    assert "FSDP processes fitting 0.01 GiB" in out and "over 9 shapes (identifiable)" in out


def test_model_option_bad_input_is_one_line(scale_memory, tmp_path, capsys):
    law = tmp_path / "law.json"
    _law_file(scale_memory, law, [1.0, 1.0, 1.0, 1.0, 1.0])
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"model_type": "bert"}')
    for model, expected in [(tmp_path / "missing", "does not exist"), (tmp_path / "bad.json", "not a readable JSON"),
                            (tmp_path / "other.json", "model_type 'bert' is not supported")]:
        assert scale_memory.main(["--model", str(model), "--law", str(law)]) == 1
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1
