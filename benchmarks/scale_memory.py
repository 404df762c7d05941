"""Peak memory of every unlearning method on the real 7B architectures (LLaVA-1.5-7B, Qwen2.5-VL-7B).

Two modes, the same code path (the methods as ``mllm-unlearn run`` calls them, with their
``paper`` preset, a few steps each):

- GPU (``--device cuda``): random-init models of the real 7B configurations (written below,
  built on the meta device, no download) run each method for ``--steps`` steps, LoRA and full
  fine-tuning; the table gives each case's peak GPU memory (``torch.cuda.max_memory_allocated``,
  weights included). Under ``torchrun --nproc_per_node N`` every process runs the same cases
  through the tool's own training loop (sharded as far as the installed code shards) and the
  table gives the largest per-process peak.
- CPU (default when no GPU): a PREDICTION of each case's 7B peak, from
  * exact static accounting on the real 7B configs (meta device, nothing allocated): bf16
    weights; per trained parameter (LoRA adapters of the default ``LoraOptions`` targets, or what
    the method's full fine-tuning trains) an fp32 master weight, an fp32 gradient, AdamW's two fp32
    moments and autocast's bf16 copy (``training.loop.fp32_master_weights``); the frozen copies a
    method holds (KL: the whole model; RMU and RMisU: the truncated reference up to layer 7);
    MMUnlearner's saliency mask, second AdamW and its Fisher pass (bf16 gradients + one fp32 sum of
    the language tower on the device);
  * an activation law fitted to bytes measured exactly: every case runs one step (its ``prepare``
    included: Fisher, path search, statistics, PGD) on scaled-down bf16 configs of the same
    architecture (the real vocabulary; ``LAW_SHAPES``: widths, depths, samples and image sizes),
    with and without gradient checkpointing, under ``torch.autograd.graph.saved_tensors_hooks``
    counting the peak of live saved-for-backward storage (each storage once, weights left out);
    a least-squares fit of ``bytes ≈ a·T·d·L + b·P·dv·Lv + c·T_ans·V + e·T·d + f`` (T tokens, P
    vision patches, T_ans answer tokens) is evaluated at the 7B width, depth, vocabulary and the
    paper preset's batch. Checkpointing keeps each block's input (seen by the hooks); the block
    recomputed in backward is not seen and is added as one block's share of the difference.
    Forward-only passes (MANU's statistics) are estimated as the batch's logits (bf16 + fp32) plus
    one block's FFN activations. ``--rss`` runs the older tables instead (peak resident set of each
    method on scaled-down models, forked child per case, and its fit: noise at 7B, kept for reference).

Nothing here is timed. ``--quick`` runs a small subset (LLaVA, GA and MANU). Options that other parts of the tool add
(gradient checkpointing) are used when
``MethodConfig`` has them; the script prints what it found.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # children are forked after the tokenizer is used

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

GIB = 1024 ** 3
GRADIENT_METHODS = ("ga", "graddiff", "kl", "npo", "rmu", "mmunlearner", "mip-editor")
OTHER_METHODS = ("manu", "mllmeraser")  # no training: statistics / steering
FAMILIES = ("llava", "qwen2.5-vl")
ONE_GPU_BYTES = 80 * 10 ** 9  # an 80 GB GPU

# Real architecture ratios the scaled-down configs keep (from the 7B configs below).
RATIOS = {
    # LM FFN / width; vision width / LM width; vision FFN / vision width; vision depth / LM depth
    "llava": {"ffn": 11008 / 4096, "vision": 1024 / 4096, "vision_ffn": 4096 / 1024, "vision_depth": 24 / 32},
    "qwen2.5-vl": {"ffn": 18944 / 3584, "vision": 1280 / 3584, "vision_ffn": 3420 / 1280, "vision_depth": 32 / 28},
}
REAL_VOCAB = {"llava": 32064, "qwen2.5-vl": 152064}
REAL_IMAGE_TOKENS = {"llava": 576, "qwen2.5-vl": 256}  # LLaVA: 336² / 14²; Qwen2.5-VL: a 448² image, 2×2 merge


def llava_7b_config(image_token_id: int = 32000) -> Any:
    """llava-hf/llava-1.5-7b-hf: Llama-2-7B (4096 wide, 32 layers) + CLIP ViT-L/14-336."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")


def qwen25_vl_7b_config(ids: dict[str, int] | None = None) -> Any:
    """Qwen/Qwen2.5-VL-7B-Instruct: 3584 wide, 28 layers, GQA 28/4, untied 152064-token head, 32-block ViT."""
    from transformers import Qwen2_5_VLConfig

    ids = ids or {"image": 151655, "video": 151656, "start": 151652, "end": 151653}
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                            video_token_id=ids["video"], vision_start_token_id=ids["start"],
                            vision_end_token_id=ids["end"], tie_word_embeddings=False)


def real_config(family: str, tokenizer: Any = None) -> Any:
    if family == "llava":
        return llava_7b_config(tokenizer.convert_tokens_to_ids("<image>") if tokenizer is not None else 32000)
    ids = None
    if tokenizer is not None:
        ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (("image", "<|image_pad|>"), ("video", "<|video_pad|>"),
                                                                 ("start", "<|vision_start|>"), ("end", "<|vision_end|>"))}
    return qwen25_vl_7b_config(ids)


def model_class(family: str) -> Any:
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    return LlavaForConditionalGeneration if family == "llava" else Qwen2_5_VLForConditionalGeneration


def shape_of(config: Any) -> dict[str, int]:
    """The dimensions the fit reads: LM width/depth, vision width/depth, vocabulary."""
    text, vision = config.get_text_config(), config.vision_config
    return {"d": text.hidden_size, "L": text.num_hidden_layers, "V": text.vocab_size,
            "dv": vision.hidden_size, "Lv": getattr(vision, "num_hidden_layers", None) or vision.depth}


def parameter_count(family: str) -> int:
    """Parameters of the real 7B model, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = model_class(family)(real_config(family))
    return sum(p.numel() for p in model.parameters())


# --- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    batch: int


@dataclass(frozen=True)
class Case:
    family: str
    method: str
    mode: str  # "lora", "full", or "-" (no training)
    shape: Shape | None  # None: the real 7B configuration


DEFAULT_SHAPES = (Shape(64, 2, 2), Shape(128, 2, 2), Shape(256, 2, 2), Shape(128, 4, 2), Shape(128, 2, 4))
QUICK_SHAPES = (Shape(64, 2, 2), Shape(128, 2, 2))


MODES = ("lora", "full")


def method_modes(methods: list[str], modes: tuple[str, ...] = MODES) -> list[tuple[str, str]]:
    return [(m, mode) for m in methods for mode in (modes if m in GRADIENT_METHODS else ("-",))]


def tiny_size(family: str, shape: Shape) -> Any:
    """A scaled-down config of ``family``'s 7B architecture: head width 32 (vision 16), the real
    FFN, vision-width and depth ratios; 64-pixel images (LLaVA 64 image tokens, Qwen 16)."""
    from mllm_unlearn.models import TinySize

    ratio = RATIOS[family]

    def round_to(x: float, step: int) -> int:
        return max(step, int(round(x / step)) * step)

    vision = round_to(shape.hidden * ratio["vision"], 16)
    return TinySize(hidden=shape.hidden, layers=shape.layers, heads=shape.hidden // 32,
                    ffn=round_to(shape.hidden * ratio["ffn"], 8), vision_hidden=vision,
                    vision_layers=max(2, round(shape.layers * ratio["vision_depth"])), vision_heads=vision // 16,
                    vision_ffn=round_to(vision * ratio["vision_ffn"], 8), image_size=64, image_grid=8, max_positions=1024)


def build_model(case: Case, words: set[str], device: torch.device, dtype: torch.dtype) -> Any:
    """The case's model: the scaled-down config with the real vocabulary, or the real 7B config
    built on the meta device and materialised on ``device`` with random weights."""
    from mllm_unlearn.models import VLM, adapter_for_family
    from mllm_unlearn.models.tiny import build_word_tokenizer

    adapter = adapter_for_family(case.family)
    tokenizer = build_word_tokenizer(words, case.family)
    if case.shape is not None:
        size = tiny_size(case.family, case.shape)
        model = adapter.tiny_model(tokenizer, size)
        model.resize_token_embeddings(REAL_VOCAB[case.family], mean_resizing=False)
        processor = adapter.tiny_processor(tokenizer, size)
    else:
        with torch.device("meta"):
            model = model_class(case.family)(real_config(case.family, tokenizer))
        model.to_empty(device=device)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias") or param.dim() == 1:
                    param.fill_(1.0 if "norm" in name else 0.0)
                else:
                    param.normal_(0.0, 0.02)
        for module in model.modules():  # buffers (rotary frequencies) are computed, not loaded
            if hasattr(module, "inv_freq") and hasattr(module, "rope_init_fn"):
                inv_freq, _ = module.rope_init_fn(module.config, device)
                module.inv_freq = inv_freq
        processor = real_processor(case.family, tokenizer, adapter)
    model.to(device=device, dtype=dtype)
    model.eval()
    return VLM(model, processor, adapter, device, dtype)


def real_processor(family: str, tokenizer: Any, adapter: Any) -> Any:
    """The real models' image geometry with the word tokenizer (the vocabulary is the model's)."""
    from mllm_unlearn.models import TinySize

    if family == "llava":
        return adapter.tiny_processor(tokenizer, TinySize(image_size=336, image_grid=24))  # 14-pixel patches
    from transformers import Qwen2VLImageProcessorPil

    from mllm_unlearn.models.qwen2_vl import QWEN_CHAT_TEMPLATE

    pixels = 448 * 448
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=pixels, max_pixels=pixels)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return adapter._image_only_processor(image_processor, tokenizer, QWEN_CHAT_TEMPLATE)


CHECKPOINTING_NOTE: list[str] = []


def method_config(case: Case, batch: int, steps: int, layers: int) -> Any:
    """The method's ``paper`` preset, for ``steps`` steps of ``batch`` samples; layer options
    clamped to the model's depth; gradient checkpointing on where the tool offers it."""
    from dataclasses import replace

    from mllm_unlearn.methods.defaults import method_preset
    from mllm_unlearn.training import LoraOptions

    cfg = method_preset(case.method, "paper")
    cfg = replace(cfg, max_steps=steps, epochs=1, batch_size=batch, progress=False,
                  lora=LoraOptions() if case.mode == "lora" else None)
    extra = dict(cfg.extra)
    if case.method in ("rmu", "mip-editor"):
        extra["layer"] = min(int(extra.get("layer", 7)), layers - 1)
    if case.method == "mip-editor":
        extra["path_samples"] = batch
        extra["path_batch_size"] = batch
    cfg = replace(cfg, extra=extra)
    names = {f.name for f in fields(cfg)}
    if "gradient_checkpointing" in names:
        cfg = replace(cfg, gradient_checkpointing=True)
        note = "gradient checkpointing: on (MethodConfig.gradient_checkpointing)"
    else:
        note = "gradient checkpointing: not offered by this version of the tool (MethodConfig has no such field)"
    if note not in CHECKPOINTING_NOTE:
        CHECKPOINTING_NOTE.append(note)
    return cfg


def run_case(case: Case, data: dict[str, Any], steps: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Build the case's model and run its method once; returns the fit's features."""
    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.methods import get_method

    vlm = build_model(case, data["words"], device, dtype)
    shape = shape_of(vlm.model.config)
    batch = case.shape.batch if case.shape is not None else data["predict_batch"]
    forget, retain = data["forget"][: 2 * batch], data["retain"][: 2 * batch]
    encoded = Encoder(vlm, cache_size=0).batch(forget[:batch], train=True)
    image_id = vlm.model.config.image_token_id if hasattr(vlm.model.config, "image_token_id") else \
        vlm.model.config.image_token_index
    tokens = int(encoded["attention_mask"].sum())
    features = {"parameters": sum(p.numel() for p in vlm.model.parameters()), "tokens": tokens,
                "image_tokens": int((encoded["input_ids"] == image_id).sum()), "batch": batch, **shape}
    method = get_method(case.method)
    cfg = method_config(case, batch, steps, shape["L"])
    method.check_options(cfg)
    method.unlearn(vlm, forget, retain, cfg)
    return features


def measure_in_child(case: Case, data: dict[str, Any], steps: int, dtype: torch.dtype) -> dict[str, Any]:
    """Run the case in a forked child; its peak resident set (bytes) and features, or its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            torch.manual_seed(0)
            out = {"features": run_case(case, data, steps, torch.device("cpu"), dtype)}
        except BaseException as error:  # noqa: BLE001 - reported in the table, the run goes on
            out = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
        with os.fdopen(write, "w") as pipe:
            pipe.write(json.dumps(out))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    out = json.loads(text) if text else {"error": f"child ended with status {status} (killed: out of memory?)"}
    out["peak_bytes"] = usage.ru_maxrss * 1024  # Linux: kilobytes
    return out


def warm_up(families: list[str], data: dict[str, Any], dtype: torch.dtype) -> None:
    """Import everything a case uses (model classes, processors, peft, accelerate, every method)
    in the parent, once: the forked children share it instead of importing it each time. Freed
    memory is returned to the system afterwards, so that no child reuses the parent's freed pages
    without them showing in its own peak."""
    import ctypes
    import gc

    from mllm_unlearn.methods import available_methods

    available_methods()
    for family in families:
        run_case(Case(family, "ga", "lora", Shape(32, 2, 1)), data, 1, torch.device("cpu"), dtype)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: freed pages may stay with the parent (the baseline includes them)
        pass


def idle_child_peak() -> int:
    """Peak resident set of a forked child that does nothing: the parent's share, subtracted."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss * 1024


def measure_on_gpu(case: Case, data: dict[str, Any], steps: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    try:
        torch.manual_seed(0)
        out: dict[str, Any] = {"features": run_case(case, data, steps, device, dtype)}
    except torch.OutOfMemoryError as error:
        out = {"error": f"OutOfMemoryError: {str(error).splitlines()[0]}"[:200]}
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
        out = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
    peak = torch.cuda.max_memory_allocated(device) - before
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = torch.tensor([peak], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        peak = int(value.item())
    out["peak_bytes"] = peak
    gc.collect()
    torch.cuda.empty_cache()
    return out


# --- the fit ----------------------------------------------------------------------------------
FEATURE_NAMES = ("parameters", "activations", "logits", "constant")


def feature_row(f: dict[str, Any]) -> list[float]:
    return [float(f["parameters"]), float(f["tokens"]) * (f["d"] * f["L"] + f["dv"] * f["Lv"]),
            float(f["tokens"]) * f["V"], 1.0]


def fit(points: list[tuple[dict[str, Any], int]]) -> list[float] | None:
    """Non-negative least squares of peak bytes on the features, each column scaled to unit norm."""
    if len(points) < len(FEATURE_NAMES):
        return None
    coefficients, _ = _nnls([feature_row(f) for f, _ in points], [float(peak) for _, peak in points])
    return coefficients


def _nnls(rows: list[list[float]], values: list[float]) -> tuple[list[float], float]:
    """Non-negative least squares of ``values`` on ``rows`` (columns scaled to unit norm); returns
    the coefficients and the largest relative residual."""
    import numpy as np
    from scipy.optimize import nnls

    x, y = np.array(rows), np.array(values)
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(x / scale, y)
    coefficients = solution / scale
    residual = float(np.max(np.abs(x @ coefficients - y) / np.maximum(y, 1.0)))
    return list(coefficients), residual


def predict(coefficients: list[float], features: dict[str, Any]) -> float:
    return float(sum(c * v for c, v in zip(coefficients, feature_row(features))))


def seven_b_features(family: str, batch: int, text_tokens: float, parameters: int) -> dict[str, Any]:
    shape = shape_of(real_config(family))
    tokens = batch * (REAL_IMAGE_TOKENS[family] + text_tokens)
    return {"parameters": parameters, "tokens": tokens, "batch": batch, **shape}


# --- prediction from exact accounting and the measured activation law --------------------------
# Assumptions for the 7B targets (stated in the printed table): an MLLMU VQA item has about 60
# text tokens of which 24 are the answer (real BPE tokenizers); LLaVA-1.5 sees 576 image tokens
# (577 CLIP patches with the class token); Qwen2.5-VL a 448×448 image: 256 merged tokens, 1024
# vision patches (the real images' size at the default max_pixels is not known here).
TEXT_TOKENS_7B = 60
ANSWER_TOKENS_7B = 24
VISION_PATCHES_PER_IMAGE = {"llava": 577, "qwen2.5-vl": 1024}
LORA_TARGET_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Bytes per trained parameter: fp32 master (replaces the bf16 weight) + fp32 gradient + AdamW's two
# fp32 moments + autocast's bf16 copy during forward/backward (training.loop.fp32_master_weights).
TRAINED_BYTES = 4 + 4 + 8 + 2
LAW_NAMES = ("lm blocks T·d·L", "vision blocks P·dv·Lv", "logits T_ans·V", "embeddings T·d", "constant")


@dataclass(frozen=True)
class LawShape:
    """A scaled-down size for the activation law: LM width/depth, samples, image grid; the vision
    tower's width/depth (0: the family's ratios to the LM's)."""
    hidden: int
    layers: int
    batch: int
    grid: int
    vision_hidden: int = 0
    vision_layers: int = 0


LAW_SHAPES = (LawShape(64, 2, 1, 8), LawShape(128, 2, 1, 8), LawShape(64, 4, 1, 8), LawShape(64, 2, 2, 8),
              LawShape(64, 2, 1, 16), LawShape(128, 4, 2, 12), LawShape(96, 3, 1, 12),
              # the vision tower's width and depth off the family's ratios, so that its term is told
              # apart from the LM's (patches grow with tokens, d_v with d, L_v with L otherwise)
              LawShape(64, 2, 1, 8, vision_hidden=48, vision_layers=5), LawShape(128, 3, 1, 12, vision_hidden=16,
                                                                                  vision_layers=2))


def law_row(f: dict[str, Any]) -> list[float]:
    """The activation law's features: tokens × width × the LM blocks that save activations (LM),
    vision patches × vision width × depth (only where a gradient flows through the vision tower),
    answer tokens × vocabulary (only where the loss reads the logits), tokens × width (embeddings,
    final norm), 1. Features without a scope (older files) charge everything."""
    lm_layers = f.get("lm_layers", f["L"])
    vision, logits = float(f.get("vision", 1)), float(f.get("logits", 1))
    return [float(f["tokens"]) * f["d"] * lm_layers, vision * float(f["patches"]) * f["dv"] * f["Lv"],
            logits * float(f["answer_tokens"]) * f["V"], float(f["tokens"]) * f["d"], 1.0]


def preset_layer(method: str, layers: int) -> int:
    """The layer RMU's and MIP-Editor's losses read (their paper preset's, clamped to the depth)."""
    from mllm_unlearn.methods.defaults import method_preset

    layer = method_preset(method, "paper").extra.get("layer", 7)
    return min(int(layer if layer is not None else max(1, layers // 4)), layers - 1)


def activation_scope(method: str, mode: str, layers: int) -> dict[str, int]:
    """Which parts of the model save activations for backward under ``method``'s paper preset
    (methods/*.py): autograd saves nothing upstream of the first tensor that needs a gradient, so
    a frozen vision tower saves nothing and only LM blocks from the first trained one to the
    loss's layer do. ``lm_layers``: such LM blocks; ``vision``: 1 where a gradient flows through
    the vision tower; ``logits``: 1 where the loss reads the vocabulary logits.
    - GA, GradDiff, KL, NPO: LoRA adapts the language model only (``LoraOptions.target_modules``);
      full fine-tuning trains every parameter, the vision tower included.
    - RMU: forwards stop at its layer (``training.truncated``); LoRA adapts blocks 0..layer, full
      fine-tuning trains the MLPs of blocks layer-2..layer only; the loss reads hidden states.
    - MMUnlearner (paper: ``mask=language``): the language tower's weights only.
    - MIP-Editor: its paths include vision FFN neurons (``paths=both``) and its path search
      attributes the answer's likelihood through both towers.
    - MLLMEraser: PGD on the image's pixels sends a gradient through both towers.
    - MANU: forward passes only (statistics)."""
    if method == "rmu":
        layer = preset_layer(method, layers)
        return {"lm_layers": layer + 1 if mode == "lora" else min(3, layer + 1), "vision": 0, "logits": 0}
    vision = {"ga": mode == "full", "graddiff": mode == "full", "kl": mode == "full", "npo": mode == "full",
              "mip-editor": True, "mllmeraser": True}.get(method, False)
    return {"lm_layers": layers, "vision": int(vision), "logits": 1}


def fit_law(points: list[tuple[dict[str, Any], float]]) -> tuple[list[float], float] | None:
    """Non-negative least squares of saved bytes on ``law_row``; returns (coefficients, largest
    relative residual). Saved bytes are deterministic, so an exact law leaves ~0 residual."""
    if len(points) < len(LAW_NAMES):
        return None
    return _nnls([law_row(f) for f, _ in points], [float(v) for _, v in points])


def law_degeneracy(points: list[tuple[dict[str, Any], float]], coefficients: list[float]) -> list[str]:
    """The law's terms that the points cannot identify (the design matrix's in-scope columns are
    linearly dependent) or that the fit set to 0 although in scope: what makes a fit untrustworthy."""
    import numpy as np

    x = np.array([law_row(f) for f, _ in points])
    used = [i for i in range(x.shape[1]) if np.any(x[:, i] != 0)]
    scaled = x[:, used] / np.linalg.norm(x[:, used], axis=0)
    problems = []
    if not any(v for _, v in points):
        return []  # nothing saved (forward passes only): there is no term to identify
    if np.linalg.matrix_rank(scaled, tol=1e-9) < len(used):
        problems.append("columns not independent on these shapes")
    problems += [f"{LAW_NAMES[i]} set to 0" for i in used if i < 3 and coefficients[i] == 0.0]
    return problems


def law_predict(coefficients: list[float], features: dict[str, Any]) -> float:
    return float(sum(c * v for c, v in zip(coefficients, law_row(features))))


_WEIGHT_VIEW_OPS = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "ViewBackward0", "PermuteBackward0",
                    "ExpandBackward0", "UnsqueezeBackward0", "ReshapeAliasBackward0"}


class SavedBytesMeter:
    """Peak bytes of the tensors autograd keeps for backward (``saved_tensors_hooks``), counting
    each storage once while any saved reference to it lives. Model parameters and autocast's
    copies of them are left out: they are static memory, counted by the accounting."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.live: dict[int, list[int]] = {}  # storage pointer -> [references, bytes]
        self.current = 0
        self.peak = 0

    def _is_weight(self, t: torch.Tensor) -> bool:
        if isinstance(t, torch.nn.Parameter) or t.untyped_storage().data_ptr() in self.params:
            return True
        # autocast's bf16 copy of a trained (leaf) weight, or a view of it (the transpose a linear saves)
        fn, depth = t.grad_fn, 0
        while fn is not None and depth < 4 and fn.name() in _WEIGHT_VIEW_OPS:
            parents = [n for n, _ in fn.next_functions if n is not None]
            if any(type(n).__name__ == "AccumulateGrad" for n in parents):
                return True
            fn, depth = (parents[0] if len(parents) == 1 else None), depth + 1
        return False

    def pack(self, t: torch.Tensor) -> Any:
        import weakref

        if not isinstance(t, torch.Tensor) or t.device.type == "meta" or self._is_weight(t):
            return t
        key = t.untyped_storage().data_ptr()
        entry = self.live.setdefault(key, [0, t.untyped_storage().nbytes()])
        if entry[0] == 0:
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        holder = _Saved(t)
        weakref.finalize(holder, self._release, key)
        return holder

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]

    @staticmethod
    def unpack(saved: Any) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def __enter__(self) -> "SavedBytesMeter":
        self.params = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self._hooks.__enter__()
        return self

    def refresh_parameters(self) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def law_size(family: str, shape: LawShape) -> Any:
    from dataclasses import replace as dc_replace

    size = tiny_size(family, Shape(shape.hidden, shape.layers, shape.batch))
    # LLaVA: grid² image tokens; Qwen2.5-VL: (grid/2)² merged tokens (patch = image_size / 8 in the adapter)
    image = 8 * shape.grid if family == "qwen2.5-vl" else 4 * shape.grid
    size = dc_replace(size, image_size=image, image_grid=shape.grid)
    if shape.vision_hidden:
        ffn = max(8, int(round(shape.vision_hidden * RATIOS[family]["vision_ffn"] / 8)) * 8)
        size = dc_replace(size, vision_hidden=shape.vision_hidden, vision_heads=shape.vision_hidden // 16, vision_ffn=ffn)
    if shape.vision_layers:
        size = dc_replace(size, vision_layers=shape.vision_layers)
    return size


def measure_saved_bytes(family: str, method: str, mode: str, shape: LawShape, checkpointing: bool,
                        data: dict[str, Any], size: Any = None) -> dict[str, Any]:
    """One optimizer step (prepare included: Fisher, path search, statistics, PGD) of ``method``'s
    paper preset on a scaled-down bf16 model (``size``: a ``TinySize`` instead of ``shape``'s, whose
    batch is used); the peak saved-for-backward bytes and the features."""
    from dataclasses import replace

    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.methods import get_method
    from mllm_unlearn.models import VLM, adapter_for_family
    from mllm_unlearn.models.tiny import build_word_tokenizer

    torch.manual_seed(0)
    adapter = adapter_for_family(family)
    tokenizer = build_word_tokenizer(data["words"], family)
    size = size or law_size(family, shape)
    model = adapter.tiny_model(tokenizer, size)
    model.resize_token_embeddings(REAL_VOCAB[family], mean_resizing=False)
    processor = adapter.tiny_processor(tokenizer, size)
    model.to(dtype=torch.bfloat16).eval()
    vlm = VLM(model, processor, adapter, torch.device("cpu"), torch.bfloat16)
    b = shape.batch
    forget, retain = data["forget"][: 2 * b], data["retain"][: 2 * b]
    encoded = Encoder(vlm, cache_size=0).batch(forget[:b], train=True)
    config = model.config
    image_id = getattr(config, "image_token_id", None) or config.image_token_index
    image_tokens = int((encoded["input_ids"] == image_id).sum())
    images = sum(1 for item in forget[:b] if getattr(item, "modality", "vqa") == "vqa")
    sh = shape_of(config)
    features = {"tokens": int(encoded["attention_mask"].sum()), "answer_tokens": int((encoded["labels"] != -100).sum()),
                "patches": image_tokens * 4 if family == "qwen2.5-vl" else image_tokens + images, "batch": b, **sh,
                "parameters": sum(p.numel() for p in model.parameters()), **activation_scope(method, mode, sh["L"])}
    cfg = method_config(Case(family, method, mode, Shape(sh["d"], sh["L"], b)), b, 1, sh["L"])
    if "gradient_checkpointing" in {f.name for f in fields(cfg)}:
        cfg = replace(cfg, gradient_checkpointing=checkpointing)
    runner = get_method(method)
    runner.check_options(cfg)
    with SavedBytesMeter(model) as meter:
        import mllm_unlearn.training.loop as loop

        original = loop.fp32_master_weights

        @contextmanager
        def _noted(trainable: Any) -> Any:  # the masters are new storages: leave them out too
            with original(trainable) as masters:
                meter.refresh_parameters()
                yield masters

        meter.refresh_parameters()
        loop.fp32_master_weights = _noted
        try:
            runner.unlearn(vlm, forget, retain, cfg)
        finally:
            loop.fp32_master_weights = original
    return {"features": features, "saved_bytes": meter.peak}


def lora_parameters(model: torch.nn.Module, pattern: str, rank: int, names: tuple[str, ...] = LORA_TARGET_LINEARS) -> int:
    import re

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name) and name.rsplit(".", 1)[-1] in names:
            total += rank * (module.in_features + module.out_features)
    return total


def static_accounting(family: str, config: Any = None) -> dict[tuple[str, str], dict[str, float]]:
    """Exact static bytes per (method, mode) of the real 7B model, or of ``config`` (built on the meta device):
    bf16 weights, trained parameters at ``TRAINED_BYTES`` each, frozen reference copies, masks,
    Fisher sums. Returns per case: static bytes, the shardable part (parameters, gradients,
    optimizer states: FSDP divides it), trained parameter count."""
    import re

    from mllm_unlearn.models import adapter_for_family
    from mllm_unlearn.training import LoraOptions

    model = meta_model(family, config if config is not None else real_config(family))
    adapter = adapter_for_family(family)
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    layers = adapter.lm_layers(model)
    base = _path_of(model, layers)
    lm_linear = {n: p for n, p in named.items() if n.startswith(base + ".") and n.endswith(".weight")
                 and n.rsplit(".", 2)[-2] in LORA_TARGET_LINEARS}
    options = LoraOptions()
    lora_all = lora_parameters(model, options.target_modules, options.r)
    loss_layer = preset_layer("rmu", len(layers))  # paper presets of RMU and MIP-Editor (RMisU): 7
    prefix_layers = range(loss_layer + 1)
    rmu_mlp = sum(p.numel() for n, p in named.items()
                  if re.fullmatch(rf"{re.escape(base)}\.({'|'.join(str(i) for i in range(loss_layer - 2, loss_layer + 1))})\.mlp\..*", n))
    down = {n: p for n, p in lm_linear.items() if n.rsplit(".", 2)[-2] == "down_proj"
            and int(n[len(base) + 1:].split(".")[0]) in prefix_layers}
    down_lora = sum(options.r * (p.shape[0] + p.shape[1]) for p in down.values())
    # The truncated reference (RMU, RMisU): everything that feeds layer ``loss_layer``'s output
    # (vision tower, projector, embeddings, layers 0..loss_layer), in bf16.
    after = sum(p.numel() for n, p in named.items() if n.startswith(base + ".")
                and int(n[len(base) + 1:].split(".")[0]) > loss_layer)
    head = sum(p.numel() for n, p in named.items() if "lm_head" in n or n.endswith(".norm.weight") and base not in n)
    truncated = 2 * (total - after - head)
    lm_lin = sum(p.numel() for p in lm_linear.values())
    weights = 2 * total
    cases: dict[tuple[str, str], dict[str, float]] = {}

    def add(method: str, mode: str, trained: int, extra: float = 0.0, per_param: int = TRAINED_BYTES,
            base_trained: bool = True, note: str = "") -> None:
        # full fine-tuning: a trained weight's bf16 storage becomes its fp32 master (counted in per_param)
        model_bytes = weights - (2 * trained if base_trained else 0)
        shardable = model_bytes + trained * per_param
        cases[(method, mode)] = {"static": shardable + extra, "shardable": shardable, "trained": trained,
                                 "extra": extra, "note": note}

    for method in ("ga", "graddiff", "npo"):
        add(method, "lora", lora_all, base_trained=False)
        add(method, "full", total)
    add("kl", "lora", lora_all, extra=weights, base_trained=False, note="frozen bf16 copy")
    add("kl", "full", total, extra=weights, note="frozen bf16 copy")
    add("rmu", "lora", lora_all, extra=truncated, base_trained=False, note="truncated reference")
    add("rmu", "full", rmu_mlp, extra=truncated, note="truncated reference")
    add("mip-editor", "lora", down_lora, extra=truncated, base_trained=False, note="truncated reference")
    add("mip-editor", "full", sum(p.numel() for p in down.values()), extra=truncated, note="truncated reference")
    # MMUnlearner: two phases, two AdamW states; a bool saliency mask per LM linear weight; the
    # Fisher pass before training holds bf16 gradients + one fp32 sum of the tower (streamed to CPU).
    fisher = weights + (2 + 4) * lm_lin
    add("mmunlearner", "lora", 2 * lora_all, extra=lm_lin, per_param=TRAINED_BYTES + 8, base_trained=False,
        note="mask; 2 adapters, 2 AdamW")
    add("mmunlearner", "full", lm_lin, extra=lm_lin, per_param=TRAINED_BYTES + 8, note="mask; 2 AdamW")
    for mode in ("lora", "full"):
        case = cases[("mmunlearner", mode)]
        case["fisher"] = fisher
    # MANU, MLLMEraser: no training; their statistics are per neuron / per layer (< 0.1 GiB).
    d, L = shape_of(model.config)["d"], shape_of(model.config)["L"]
    ffn = model.config.get_text_config().intermediate_size
    add("manu", "-", 0, extra=8 * 4 * L * ffn, base_trained=False, note="neuron statistics")
    add("mllmeraser", "-", 0, extra=8 * 4 * L * d, base_trained=False, note="steering statistics")
    largest_unit = max([2 * sum(p.numel() for p in layer.parameters()) for layer in layers] +
                       [2 * p.numel() for n, p in named.items() if "embed" in n or "lm_head" in n])
    for case in cases.values():
        case["gather"] = 2 * largest_unit  # FSDP: one unit all-gathered, the next prefetched
    return cases


def _path_of(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module not in model")


def meta_model(family: str, config: Any) -> torch.nn.Module:
    """``config``'s model on the meta device (nothing allocated): the family's model class
    (``AutoModelForImageTextToText`` for a family this script has no 7B config of)."""
    with torch.device("meta"):
        if family in FAMILIES:
            return model_class(family)(config)
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_config(config)


def image_geometry(family: str, config: Any) -> tuple[int, int]:
    """(image tokens, vision patches) per image: LLaVA from the tower's image and patch size (one
    class token more in the tower; ``image_seq_length`` is not read: its default is 576 whatever
    the tower); Qwen-VL families a 448×448 image, merged ``spatial_merge_size``²."""
    vision = config.vision_config
    if family == "llava":
        side = vision.image_size // vision.patch_size  # the class token is kept only by the "full" strategy
        full = getattr(config, "vision_feature_select_strategy", "default") == "full"
        return side * side + int(full), side * side + 1
    patches = (448 // vision.patch_size) ** 2
    return patches // vision.spatial_merge_size ** 2, patches


def target_features(family: str, batch: int, config: Any = None, method: str | None = None,
                    mode: str = "lora") -> dict[str, Any]:
    """The law's features at the target (the real 7B config unless ``config``), per sample
    ``TEXT_TOKENS_7B`` text tokens of which ``ANSWER_TOKENS_7B`` answer; ``method``: its scope."""
    config = config if config is not None else real_config(family)
    shape = shape_of(config)
    image_tokens, patches = image_geometry(family, config)
    scope = activation_scope(method, mode, shape["L"]) if method else {}
    if method:
        batch = samples_per_pass(method, batch, image_tokens + TEXT_TOKENS_7B)
    return {"tokens": batch * (image_tokens + TEXT_TOKENS_7B), "answer_tokens": batch * ANSWER_TOKENS_7B,
            "patches": batch * patches, "batch": batch, **shape, **scope}


def forward_working_set(family: str, batch: int, config: Any = None) -> float:
    """A forward-only pass's transient peak (MANU's statistics, MLLMEraser's read-out): the batch's
    logits in bf16 plus an fp32 copy, and one block's FFN activations (gate, up, product) in bf16."""
    config = config if config is not None else real_config(family)
    f = target_features(family, batch, config)
    ffn = config.get_text_config().intermediate_size
    return f["tokens"] * (f["V"] * 6 + 3 * ffn * 2)


def samples_per_pass(method: str, batch: int, tokens_per_sample: int) -> int:
    """Samples in one forward: the batch, cut so that samples × tokens stays within the paper
    preset's ``max_batch_tokens`` where it sets one (``training.batching``), at least one."""
    from mllm_unlearn.methods.defaults import method_preset

    limit = getattr(method_preset(method, "paper"), "max_batch_tokens", None)
    return batch if not limit else max(1, min(batch, limit // max(1, tokens_per_sample)))


def target_batch(method: str) -> int:
    """Samples per pass at 7B: the paper preset's batch (MIP-Editor: its path search's batch, 8, if larger)."""
    from mllm_unlearn.methods.defaults import method_preset

    cfg = method_preset(method, "paper")
    if method == "mip-editor":
        from mllm_unlearn.methods.mip_editor import _DEFAULTS

        return max(cfg.batch_size, int(cfg.extra.get("path_batch_size", _DEFAULTS["path_batch_size"])))
    return cfg.batch_size


def measure_laws(families: list[str], methods: list[str], modes: tuple[str, ...], data: dict[str, Any],
                 shapes: tuple[LawShape, ...] = LAW_SHAPES) -> list[dict[str, Any]]:
    """Saved-for-backward peaks of every case at every law shape, checkpointing on and off."""
    rows = []
    for family in families:
        for method, mode in method_modes(methods, modes):
            for checkpointing in (True, False):
                for shape in shapes:
                    try:
                        out = measure_saved_bytes(family, method, mode, shape, checkpointing, data)
                    except Exception as error:  # noqa: BLE001 - reported, the run goes on
                        out = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
                    rows.append({"family": family, "method": method, "mode": mode, "checkpointing": checkpointing,
                                 "shape": list(shape.__dict__.values()), **out})
                    print(f"  {family} {method} {mode} ckpt={'on' if checkpointing else 'off'} {shape}: "
                          f"{out.get('saved_bytes', out.get('error'))}", file=sys.stderr, flush=True)
    return rows


def law_fits(rows: list[dict[str, Any]], family: str, method: str, mode: str) -> dict[bool, Any]:
    """The activation law fitted to ``rows``' measurements of one case, checkpointing on and off:
    per setting (coefficients, largest relative residual, per-shape residuals, degeneracies), or None."""
    fits: dict[bool, Any] = {}
    for checkpointing in (True, False):
        points = [({**r["features"], **activation_scope(method, mode, r["features"]["L"])}, r["saved_bytes"])
                  for r in rows if r["family"] == family and r["method"] == method and r["mode"] == mode
                  and r["checkpointing"] == checkpointing and "saved_bytes" in r]
        law = fit_law(points)
        if law is None:
            fits[checkpointing] = None
            continue
        residuals = [(law_predict(law[0], f) - v) / max(v, 1.0) for f, v in points]
        fits[checkpointing] = {"coefficients": law[0], "residual": law[1], "residuals": residuals,
                               "degenerate": law_degeneracy(points, law[0]), "points": len(points)}
    return fits


def predict_case(rows: list[dict[str, Any]], family: str, method: str, mode: str, config: Any,
                 static: dict[tuple[str, str], dict[str, float]]) -> dict[str, Any]:
    """One case's prediction on ``config``: static bytes (accounting), activations with and without
    checkpointing (the fitted law at the config's shape and the paper preset's batch), the peaks."""
    batch = target_batch(method)
    laws = law_fits(rows, family, method, mode)
    if laws[True] is None or laws[False] is None:
        return {"family": family, "method": method, "mode": mode, "error": "too few points"}
    target = target_features(family, batch, config, method, mode)
    batch = target["batch"]  # samples per pass: the preset's max_batch_tokens may cut the batch
    on, off = law_predict(laws[True]["coefficients"], target), law_predict(laws[False]["coefficients"], target)
    # With checkpointing the hooks see what each checkpointed block keeps (its input), not the
    # block activations recomputed in backward: add one saving block's share of the difference.
    activation = on + max(0.0, off - on) / max(1, target["lm_layers"])
    if method in OTHER_METHODS:
        activation = max(activation, forward_working_set(family, batch, config))
        off = max(off, activation)
    s = static[(method, mode)]
    peak, peak_off = s["static"] + activation, s["static"] + off
    if "fisher" in s:  # the Fisher pass before training: no checkpointing there
        peak, peak_off = max(peak, s["fisher"] + off), max(peak_off, s["fisher"] + off)
    sharded = {n: s["shardable"] / n + (s["static"] - s["shardable"]) + s["gather"] + activation for n in (2, 4, 8)}
    # Activations grow with the samples per pass (linearly, the law): the largest batch that fits.
    fitting = batch_that_fits([(s["static"], activation / batch)] +
                              ([(s["fisher"], off / batch)] if "fisher" in s else []))
    out = {"family": family, "method": method, "mode": mode, "batch": batch, "static": s["static"],
            "max_batch": fitting, "activation": activation, "activation_off": off, "peak": peak,
            "peak_off": peak_off, "trained": s["trained"], "note": s["note"], "shardable": s["shardable"],
            "gather": s["gather"], "fisher": s.get("fisher"),
            "residual": max(laws[True]["residual"], laws[False]["residual"]), "fsdp": sharded,
            "degenerate": sorted(set(laws[True]["degenerate"] + laws[False]["degenerate"]))}
    residual = out["residual"]
    if residual > 0.15 or any("lm blocks" in d or "not independent" in d for d in out["degenerate"]):
        # the law's form does not describe this case's measurements: its activation is not trustworthy
        out["note"] = "; ".join(filter(None, [out["note"], f"UNRELIABLE activation (fit misses its own shapes by "
                                              f"{residual:.0%}; {', '.join(out['degenerate']) or 'form'})"]))
    return out


def predict_7b(rows: list[dict[str, Any]], families: list[str], methods: list[str],
               modes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per family, method and mode: static bytes (accounting), activation bytes (the fitted law at
    the 7B shape, checkpointing on), predicted peak on one GPU and per process under FSDP."""
    out = []
    for family in families:
        static = static_accounting(family)
        config = real_config(family)
        out += [predict_case(rows, family, method, mode, config, static) for method, mode in method_modes(methods, modes)]
    return out


def shards_that_fit(p: dict[str, Any], gpu_bytes: float, checkpointing: bool, most: int = 64) -> int | None:
    """The fewest FSDP processes (1, 2, 4, ...) at which each holds at most ``gpu_bytes``: the
    shardable bytes (parameters, gradients, optimizer states; the Fisher pass's weights and
    gradients) divided among them, frozen copies and activations not, plus two gathered units."""
    activation = p["activation"] if checkpointing else p["activation_off"]
    n = 1
    while n <= most:
        gather = p["gather"] if n > 1 else 0.0
        need = p["shardable"] / n + (p["static"] - p["shardable"]) + gather + activation
        if p.get("fisher"):
            need = max(need, p["fisher"] / n + gather + p["activation_off"])
        if need <= gpu_bytes:
            return n
        n *= 2
    return None


def batch_that_fits(phases: list[tuple[float, float]], limit: float = ONE_GPU_BYTES) -> int:
    """The most samples per pass for which every phase's static + per-sample × samples stays under ``limit``."""
    best = None
    for static, per_sample in phases:
        room = limit - static
        if room < 0:
            return 0
        n = int(room // per_sample) if per_sample > 0 else 10 ** 6
        best = n if best is None else min(best, n)
    return int(best or 0)


def report_prediction(predictions: list[dict[str, Any]]) -> None:
    print("\nPREDICTED peak GPU memory of the real 7B models (GiB; bf16 weights, fp32 master weights, grads and "
          "AdamW state of what trains; gradient checkpointing on). A PREDICTION from exact accounting of the "
          "static bytes plus the activation law fitted to saved-for-backward bytes measured on scaled-down "
          "models; the GPU mode (--device cuda) measures it.")
    print(f"Per sample: LLaVA {REAL_IMAGE_TOKENS['llava']} image + {TEXT_TOKENS_7B} text tokens, Qwen2.5-VL "
          f"{REAL_IMAGE_TOKENS['qwen2.5-vl']} image (448×448) + {TEXT_TOKENS_7B} text; {ANSWER_TOKENS_7B} answer "
          "tokens; batch: samples per pass (the paper preset's, cut by its max_batch_tokens). 'no ckpt': activations "
          "without checkpointing. FSDP-N: per process, "
          "parameters/grads/optimizer divided by N, frozen copies not, plus two gathered units. 'batch fitting 80 GB': "
          "the most samples per pass (the activation law is linear in them) that keep one GPU under 80 GB.")
    print("\n| family | method | mode | batch | trained (M) | static | activation | no ckpt | predicted peak "
          "| fits 80 GB | batch fitting 80 GB | FSDP-2 | FSDP-4 | FSDP-8 | note |\n" + "|---" * 15 + "|")
    for p in predictions:
        if "error" in p:
            print(f"| {p['family']} | {p['method']} | {p['mode']} | – | – | – | – | – | – | – | – | – | – | – | {p['error']} |")
            continue
        fsdp = " | ".join(gib(p["fsdp"][n]) if p["mode"] == "full" else "–" for n in (2, 4, 8))
        fits = "yes" if p["peak"] <= ONE_GPU_BYTES else "no"
        print(f"| {p['family']} | {p['method']} | {p['mode']} | {p['batch']} | {p['trained'] / 1e6:.0f} | "
              f"{gib(p['static'])} | {gib(p['activation'])} | {gib(p['activation_off'])} | {gib(p['peak'])} | {fits} | "
              f"{p['max_batch']} | {fsdp} | {p['note']} |")
    worst = max((p["residual"] for p in predictions if "residual" in p), default=0.0)
    print(f"\nLargest relative residual of the activation-law fits over the measured sizes: {worst:.1e}")


# --- a user's model: --model, and the law's validation: --validate ---------------------------------
LAW_FILE = Path(__file__).with_name("scale_memory_law.json")


def load_model_config(path: str) -> tuple[str, Any]:
    """(family, config) of a checkpoint folder with ``config.json`` or of a config file; the family
    is the tool's adapter for its ``model_type``. ValueError, one line naming the file, otherwise."""
    from transformers import CONFIG_MAPPING

    from mllm_unlearn.models.base import ADAPTERS

    given = Path(path)
    file = given / "config.json" if given.is_dir() else given
    if not file.is_file():
        raise ValueError(f"--model {path}: {file} does not exist" + (" (a checkpoint folder needs config.json)"
                                                                    if given.is_dir() else ""))
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: not a readable JSON model config ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: not a model config (a JSON object with model_type expected)")
    model_type = raw.get("model_type")
    adapter = next((a for a in ADAPTERS.values() if model_type in a.model_types), None)
    if adapter is None:
        supported = sorted(t for a in ADAPTERS.values() for t in a.model_types)
        raise ValueError(f"{file}: model_type {model_type!r} is not supported; supported: {', '.join(supported)}")
    try:
        config = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in raw.items() if k != "model_type"})
        shape_of(config)
    except Exception as error:  # noqa: BLE001 - a malformed config, reported as one line
        raise ValueError(f"{file}: not a usable {model_type} config ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    return adapter.family, config


def load_law(path: Path, family: str) -> list[dict[str, Any]]:
    """The saved-bytes measurements of ``family`` that the law is fitted to (written by the default CPU run)."""
    if not path.is_file():
        raise ValueError(f"{path}: no activation-law measurements (write them: python benchmarks/scale_memory.py "
                         f"--json {path})")
    try:
        rows = json.loads(path.read_text())["law_measurements"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a law-measurement file ({type(error).__name__})") from None
    rows = [r for r in rows if r.get("family") == family]
    if not rows:
        fitted = sorted({r.get("family") for r in json.loads(path.read_text())["law_measurements"]})
        raise ValueError(f"{path}: no activation law fitted for the {family} family (fitted: {', '.join(fitted)})")
    return rows


def predict_model(rows: list[dict[str, Any]], family: str, config: Any, methods: list[str],
                  modes: tuple[str, ...]) -> list[dict[str, Any]]:
    static = static_accounting(family, config)
    return [predict_case(rows, family, method, mode, config, static) for method, mode in method_modes(methods, modes)]


def report_model(predictions: list[dict[str, Any]], source: str, family: str, config: Any,
                 gpu_gib: float | None, rows: list[dict[str, Any]]) -> None:
    parameters = sum(p.numel() for p in meta_model(family, config).parameters())
    shape = shape_of(config)
    image_tokens, patches = image_geometry(family, config)
    print(f"PREDICTED peak GPU memory (GiB) of {source}: family {family}, {parameters / 1e9:.3f} B parameters, "
          f"LM {shape['d']} wide × {shape['L']} layers, vocabulary {shape['V']}, vision {shape['dv']} wide × "
          f"{shape['Lv']} layers; per sample {image_tokens} image tokens ({patches} vision patches) + "
          f"{TEXT_TOKENS_7B} text tokens, {ANSWER_TOKENS_7B} of them the answer; batch: samples per pass (the paper "
          "preset's, cut by its max_batch_tokens). "
          "Static bytes counted exactly on the meta device; activations from the law fitted to saved-for-backward "
          "bytes measured on scaled-down models (docs/scaling.md: its validation).")
    print("\nThe law's fits on their own measured shapes (largest |predicted - measured| / measured, "
          "checkpointing on / off):")
    for p in predictions:
        if "error" in p:
            continue
        laws = law_fits(rows, family, p["method"], p["mode"])
        flags = "; ".join(p["degenerate"]) or "identifiable"
        print(f"- {p['method']} {p['mode']}: {laws[True]['residual']:.1%} / {laws[False]['residual']:.1%} over "
              f"{laws[True]['points']} shapes ({flags})")
    fit_header = f" | FSDP processes fitting {gpu_gib:g} GiB (ckpt / no ckpt)" if gpu_gib else ""
    print("\n| method | mode | batch | trained (M) | static | activation | peak | activation, no ckpt | peak, no ckpt"
          + fit_header + " | note |\n" + "|---" * (10 + bool(gpu_gib)) + "|")
    for p in predictions:
        if "error" in p:
            print(f"| {p['method']} | {p['mode']} | – | – | – | – | – | – | – |" + (" – |" if gpu_gib else "")
                  + f" {p['error']} |")
            continue
        cell = ""
        if gpu_gib:
            counts = [shards_that_fit(p, gpu_gib * GIB, c) for c in (True, False)]
            cell = " " + " / ".join("none ≤ 64" if n is None else str(n) for n in counts) + " |"
        print(f"| {p['method']} | {p['mode']} | {p['batch']} | {p['trained'] / 1e6:.1f} | {gib(p['static'])} | "
              f"{gib(p['activation'])} | {gib(p['peak'])} | {gib(p['activation_off'])} | {gib(p['peak_off'])} |"
              f"{cell} {p['note']} |")


def validation_configs() -> list[tuple[str, str, Any, int]]:
    """Configs the law is not fitted on: (name, family, TinySize, batch). A LLaVA layout with the
    real CLIP ViT-L/14-336 tower and a 1024-wide, 12-layer Llama (0.53 B parameters with the real
    vocabulary), and a 256-wide, 6-layer Qwen2.5-VL layout (twice the fit's widest)."""
    from dataclasses import replace as dc_replace

    from mllm_unlearn.models import TinySize

    llava = TinySize(hidden=1024, layers=12, heads=16, ffn=2816, vision_hidden=1024, vision_layers=24, vision_heads=16,
                     vision_ffn=4096, image_size=336, image_grid=24, max_positions=1024)
    qwen = dc_replace(tiny_size("qwen2.5-vl", Shape(256, 6, 2)), image_size=8 * 16, image_grid=16)
    return [("llava-0.5b (CLIP ViT-L/14-336 + Llama 1024×12)", "llava", llava, 1),
            ("qwen2.5-vl-256 (256 wide × 6 layers)", "qwen2.5-vl", qwen, 2)]


def measure_validation(methods: list[str], modes: tuple[str, ...], data: dict[str, Any], json_path: str | None = None,
                       checkpointing: tuple[bool, ...] = (True, False),
                       families: tuple[str, ...] = FAMILIES) -> list[dict[str, Any]]:
    """Saved-for-backward bytes of every case on ``validation_configs``, measured by
    ``measure_saved_bytes`` (the fit's own measurement); written to ``json_path`` after each case."""
    rows: list[dict[str, Any]] = []
    for name, family, size, batch in validation_configs():
        if family not in families:
            continue
        for method, mode in method_modes(methods, modes):
            for ckpt in checkpointing:
                row = {"config": name, "family": family, "method": method, "mode": mode, "checkpointing": ckpt}
                try:
                    row.update(measure_saved_bytes(family, method, mode, LawShape(size.hidden, size.layers, batch,
                                                                                  size.image_grid), ckpt, data, size))
                except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
                    row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
                rows.append(row)
                print(f"  {name} {method} {mode} ckpt={'on' if ckpt else 'off'}: "
                      f"{row.get('saved_bytes', row.get('error'))}", file=sys.stderr, flush=True)
                if json_path:
                    Path(json_path).write_text(json.dumps({"validation_measurements": rows}, indent=2))
    return rows


def report_validation(rows: list[dict[str, Any]], law_file: Path) -> list[dict[str, Any]]:
    """Predicted (the law fitted to ``law_file``) against measured saved-for-backward bytes."""
    print("| config | parameters (B) | method | mode | ckpt | predicted (MiB) | measured (MiB) | predicted / measured "
          "| within 15% |\n|---|---|---|---|---|---|---|---|---|")
    out, laws = [], {}
    for r in rows:
        name, family, method, mode, ckpt = r["config"], r["family"], r["method"], r["mode"], r["checkpointing"]
        if "error" in r:
            print(f"| {name} | – | {method} | {mode} | {'on' if ckpt else 'off'} | – | – | – | error: {r['error']} |")
            continue
        key = (family, method, mode)
        if key not in laws:
            laws[key] = law_fits(load_law(law_file, family), family, method, mode)
        law = laws[key][ckpt]
        f, value = r["features"], r["saved_bytes"]
        f = {**f, **activation_scope(method, mode, f["L"])}
        predicted = law_predict(law["coefficients"], f) if law else None
        ratio = predicted / value if predicted is not None and value > 0 else None
        if ratio is None:
            within = "yes" if predicted is not None and abs(predicted) <= 2 ** 20 and value == 0 else "–"
        else:
            within = "yes" if abs(ratio - 1) <= 0.15 else "**no**"
        out.append({**r, "predicted": predicted, "ratio": ratio, "within": within})
        print(f"| {name} | {f['parameters'] / 1e9:.3f} | {method} | {mode} | {'on' if ckpt else 'off'} | "
              f"{'–' if predicted is None else f'{predicted / 2**20:.2f}'} | {value / 2**20:.2f} | "
              f"{'–' if ratio is None else f'{ratio:.2f}'} | {within} |")
    rated = [o for o in out if o["ratio"] is not None]
    if rated:
        worst = max(rated, key=lambda o: abs(o["ratio"] - 1))
        print(f"\n{sum(o['within'] == 'yes' for o in out)} of {len(out)} rows within 15%; the worst: "
              f"{worst['config']} {worst['method']} {worst['mode']} ckpt {'on' if worst['checkpointing'] else 'off'}, "
              f"predicted / measured {worst['ratio']:.2f}")
    return out


# --- main -------------------------------------------------------------------------------------
def prepare_data(people: int, predict_batch: int) -> dict[str, Any]:
    """A small built-in world (forget and retain training items) and its vocabulary."""
    from mllm_unlearn.data import WorldConfig, generate_world, load_mllmu
    from mllm_unlearn.jobs.prepare import benchmark_texts
    from mllm_unlearn.models.tiny import words_of

    root = Path(tempfile.mkdtemp(prefix="scale_memory_")) / "world"
    generate_world(root, WorldConfig(fictitious=people, real_world=2, seed=0))
    benchmark = load_mllmu(root, forget_percent=10, seed=0)
    vqa_first = lambda items: sorted(items, key=lambda i: i.modality != "vqa")  # noqa: E731 - image items first
    return {"words": words_of(benchmark_texts(benchmark)), "forget": vqa_first(benchmark.forget_train),
            "retain": vqa_first(benchmark.retain_train), "predict_batch": predict_batch}


def gib(value: float | None) -> str:
    return "–" if value is None else f"{value / GIB:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: llava, qwen2.5-vl")
    parser.add_argument("--methods", default=",".join(GRADIENT_METHODS + OTHER_METHODS), help="comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="gradient methods' modes: lora, full or both (default)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per gradient method (default 2)")
    parser.add_argument("--predict-batch", type=int, default=4, help="samples per step of the 7B cases (paper presets: 4)")
    parser.add_argument("--people", type=int, default=20, help="fictitious people in the small world (data only)")
    parser.add_argument("--shapes", help="CPU sizes as WIDTHxDEPTHxBATCH, comma-separated (default "
                        + ",".join(f"{x.hidden}x{x.layers}x{x.batch}" for x in DEFAULT_SHAPES) + ")")
    parser.add_argument("--quick", action="store_true", help="smoke run: LLaVA, ga and manu (CPU; with --rss: two sizes, no prediction)")
    parser.add_argument("--rss", action="store_true", help="CPU: the older peak-resident-set tables of each method "
                        "on scaled-down configs (slow; their fitted 7B figures are noise, see docs/scaling.md)")
    parser.add_argument("--json", help="also write every measurement and prediction here (after each case)")
    parser.add_argument("--from-json", help="measure nothing: print the CPU tables and predictions of a --json file "
                                            "(e.g. an interrupted run's)")
    parser.add_argument("--model", help="predict for your own model: a checkpoint folder with config.json, or the "
                        "config.json itself (built on the meta device; nothing is loaded or measured)")
    parser.add_argument("--gpu-gib", type=float, help="with --model: the FSDP process counts (1, 2, 4, ...) at which "
                        "each case fits a GPU of this many GiB")
    parser.add_argument("--validate", action="store_true", help="measure the configs the law is not fitted on "
                        "(CPU, minutes per method) and print predicted against measured saved-for-backward bytes")
    parser.add_argument("--law", default=str(LAW_FILE), help="the law's measurements (default: %(default)s, "
                        "written by a default CPU run with --json)")
    args = parser.parse_args(argv)

    from mllm_unlearn.utils import resolve_device, resolve_dtype

    if args.gpu_gib is not None and (not args.model or not args.gpu_gib > 0):
        print("error: --gpu-gib needs --model and a positive size in GiB", file=sys.stderr)
        return 1
    if args.model or args.validate:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        unknown = sorted(set(modes) - set(MODES)) + sorted(set(methods) - set(GRADIENT_METHODS + OTHER_METHODS))
        if unknown:
            print(f"error: unknown method or mode {', '.join(unknown)}", file=sys.stderr)
            return 1
        try:
            if args.model:
                family, config = load_model_config(args.model)
                rows = load_law(Path(args.law), family)
                report_model(predict_model(rows, family, config, methods, modes), args.model, family, config,
                             args.gpu_gib, rows)
                return 0
            if args.from_json:  # predict again for the measurements of an earlier --validate --json
                rows = json.loads(Path(args.from_json).read_text())["validation_measurements"]
                rows = [r for r in rows if r["method"] in methods and r["mode"] in modes + ("-",)]
            else:
                torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
                families = tuple(f.strip() for f in args.families.split(",") if f.strip())
                rows = measure_validation(methods, modes, prepare_data(args.people, args.predict_batch), args.json,
                                          families=families)
            report_validation(rows, Path(args.law))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        if "law_measurements" in saved:  # the default CPU run's file: predict again from its measurements
            rows = saved["law_measurements"]
            order = lambda values: list(dict.fromkeys(values))  # noqa: E731 - first-seen order
            report_prediction(predict_7b(rows, order(r["family"] for r in rows), order(r["method"] for r in rows),
                                         tuple(m for m in MODES if any(r["mode"] == m for r in rows))))
            return 0
        results = [{**r, "case": Case(r["case"]["family"], r["case"]["method"], r["case"]["mode"],
                                      Shape(**r["case"]["shape"]) if r["case"]["shape"] else None)}
                   for r in saved["measurements"]]
        cpu = [r for r in results if r["case"].shape is not None]
        info = saved.get("run", {})
        order = lambda values: list(dict.fromkeys(values))  # noqa: E731 - first-seen order
        report_cpu(cpu, order(r["case"].family for r in cpu), order(r["case"].method for r in cpu),
                   tuple(order(r["case"].shape for r in cpu)), info.get("baseline", 0), info.get("dtype", "?"),
                   info.get("steps", 0), info.get("predict_batch", args.predict_batch))
        return 0

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    families = ["llava"] if args.quick else [f.strip() for f in args.families.split(",") if f.strip()]
    methods = ["ga", "manu"] if args.quick else [m.strip() for m in args.methods.split(",") if m.strip()]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = (sorted(set(modes) - set(MODES)) + sorted(set(families) - set(FAMILIES))
               + sorted(set(methods) - set(GRADIENT_METHODS + OTHER_METHODS)))
    if unknown:
        print(f"error: unknown family, method or mode {', '.join(unknown)}", file=sys.stderr)
        return 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = prepare_data(args.people, args.predict_batch)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    main_process = int(os.environ.get("RANK", "0")) == 0
    results: list[dict[str, Any]] = []

    if device.type == "cuda":
        if distributed:
            from mllm_unlearn.utils import init_distributed

            init_distributed(cpu=False)
        for family in families:
            for method, mode in method_modes(methods, modes):
                case = Case(family, method, mode, None)
                out = measure_on_gpu(case, data, args.steps, device, dtype)
                results.append({"case": case, **out})
        if main_process:
            processes = int(os.environ.get("WORLD_SIZE", "1"))
            print(f"\nPeak GPU memory (GiB, weights included), real 7B configs, random weights, {dtype}, "
                  f"batch {args.predict_batch}, {args.steps} steps; {processes} process(es) (largest per-process peak)")
            print(*CHECKPOINTING_NOTE, sep="\n")
            print("\n| family | method | mode | peak (GiB) | fits 80 GB | note |\n|---|---|---|---|---|---|")
            for r in results:
                c = r["case"]
                fits = "–" if "error" in r else ("yes" if r["peak_bytes"] <= ONE_GPU_BYTES else "no")
                print(f"| {c.family} | {c.method} | {c.mode} | {gib(r['peak_bytes'])} | {fits} | {r.get('error', '')} |")
        _write_json(args.json, results, None)
        return 0

    if distributed:
        print("error: sharded measurement needs GPUs (the CPU mode forks one child per case)", file=sys.stderr)
        return 1
    if not args.rss:  # the default CPU run: accounting + measured activation law -> 7B prediction
        rows = measure_laws(families, methods, modes, data)
        predictions = predict_7b(rows, families, methods, modes)
        report_prediction(predictions)
        if args.json:
            Path(args.json).write_text(json.dumps({"law_measurements": rows, "predictions": predictions}, indent=2))
        return 0
    shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    if args.shapes:
        try:
            shapes = tuple(Shape(*(int(v) for v in text.lower().split("x"))) for text in args.shapes.split(","))
        except (TypeError, ValueError):
            print(f"error: --shapes {args.shapes!r}: expected WIDTHxDEPTHxBATCH[,...], e.g. 64x2x2,128x4x2", file=sys.stderr)
            return 1
    warm_up(families, data, dtype)
    baseline = idle_child_peak()
    run_info = {"baseline": baseline, "dtype": str(dtype), "steps": args.steps, "predict_batch": args.predict_batch}
    for family in families:
        for method, mode in method_modes(methods, modes):
            for shape in shapes:
                case = Case(family, method, mode, shape)
                out = measure_in_child(case, data, args.steps, dtype)
                out["peak_bytes"] = max(0, out["peak_bytes"] - baseline)
                results.append({"case": case, **out})
                print(f"  {family} {method} {mode} d={shape.hidden} L={shape.layers} batch={shape.batch}: "
                      f"{gib(out['peak_bytes'])} GiB {out.get('error', '')}", file=sys.stderr, flush=True)
                _write_json(args.json, results, None, run_info)  # so far: an interrupted run keeps its cases

    predictions = report_cpu(results, families, methods, shapes, baseline, str(dtype), args.steps, args.predict_batch)
    _write_json(args.json, results, predictions, run_info)
    return 0


def report_cpu(results: list[dict[str, Any]], families: list[str], methods: list[str], shapes: tuple[Shape, ...],
               baseline: int, dtype: str, steps: int, predict_batch: int) -> list[dict[str, Any]]:
    """Print the CPU table, the growth lines and the fitted 7B predictions; returns the predictions."""
    measured = {(r["case"].method, r["case"].mode) for r in results}

    def method_modes(methods: list[str]) -> list[tuple[str, str]]:  # the measured ones, in the usual order
        return [pair for pair in globals()["method_modes"](methods) if pair in measured]

    print(f"\nPeak memory (GiB) on CPU, scaled-down configs of the real architectures (real vocabulary), {dtype}, "
          f"{steps} steps, each case in a forked child: peak resident set minus an idle child's "
          f"({gib(baseline)} GiB). d: LM width, L: LM depth, batch: samples per step.")
    print(*CHECKPOINTING_NOTE, sep="\n")
    header = [f"d={s.hidden} L={s.layers} b={s.batch}" for s in shapes]
    print("\n| family | method | mode | " + " | ".join(header) + " |\n|---|---|---|" + "---|" * len(shapes))
    for family in families:
        for method, mode in method_modes(methods):
            found = {r["case"].shape: r for r in results
                     if r["case"].family == family and r["case"].method == method and r["case"].mode == mode}
            cells = ["–" if s not in found else ("error" if "error" in found[s] else gib(found[s]["peak_bytes"]))
                     for s in shapes]
            print(f"| {family} | {method} | {mode} | " + " | ".join(cells) + " |")
    errors = [r for r in results if "error" in r]
    for r in errors:
        c = r["case"]
        print(f"- error, {c.family} {c.method} {c.mode} d={c.shape.hidden} L={c.shape.layers}: {r['error']}")

    predictions = []
    print("\nGrowth: tokens per step (batch × sequence) and parameters of each size, per family:")
    for family in families:
        seen = {}
        for r in results:
            if r["case"].family == family and "features" in r:
                seen.setdefault(r["case"].shape, r["features"])
        print(f"- {family}: " + "; ".join(f"d={s.hidden} L={s.layers} b={s.batch}: {f['tokens']} tokens, "
                                          f"{f['parameters'] / 1e6:.1f} M parameters" for s, f in seen.items()))
    print(f"\nPREDICTED peak memory (GiB) of the real 7B models, batch {predict_batch} (LLaVA {REAL_IMAGE_TOKENS['llava']} "
          f"image tokens per sample, Qwen2.5-VL {REAL_IMAGE_TOKENS['qwen2.5-vl']}), {dtype}, from the fit "
          "peak ≈ a·parameters + b·tokens·(d·L + d_v·L_v) + c·tokens·vocab + e over the sizes above. "
          "Extrapolated far beyond the measured sizes: a prediction until the GPU mode measures it.")
    print("\n| family | method | mode | predicted peak (GiB) | fits 80 GB | a (B/param) | points |\n|---|---|---|---|---|---|---|")
    for family in families:
        ok = [r for r in results if r["case"].family == family and "features" in r]
        if not ok:
            continue
        text_tokens = sum(r["features"]["tokens"] / r["features"]["batch"] - r["features"]["image_tokens"] /
                          r["features"]["batch"] for r in ok) / len(ok)
        target = seven_b_features(family, predict_batch, text_tokens, parameter_count(family))
        for method, mode in method_modes(methods):
            points = [(r["features"], r["peak_bytes"]) for r in ok if r["case"].method == method and r["case"].mode == mode]
            coefficients = fit(points)
            value = predict(coefficients, target) if coefficients else None
            predictions.append({"family": family, "method": method, "mode": mode, "predicted_bytes": value,
                                "coefficients": coefficients, "points": len(points), "target": target})
            fits = "–" if value is None else ("yes" if value <= ONE_GPU_BYTES else "no")
            print(f"| {family} | {method} | {mode} | {gib(value)} | {fits} | "
                  f"{'–' if not coefficients else f'{coefficients[0]:.1f}'} | {len(points)} |")
    return predictions


def _write_json(path: str | None, results: list[dict[str, Any]], predictions: list[dict[str, Any]] | None,
                run: dict[str, Any] | None = None) -> None:
    if not path:
        return
    from dataclasses import asdict

    rows = [{**{k: v for k, v in r.items() if k != "case"}, "case": asdict(r["case"])} for r in results]
    Path(path).write_text(json.dumps({"run": run or {}, "measurements": rows, "predictions": predictions}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
