"""Per-method default hyperparameters (documented, overridable), by model.

Two presets: ``tiny`` (tuned here on the built-in world, for the tiny models this tool builds)
and ``paper`` (the papers' and benchmarks' settings for 7B-class checkpoints, for every model
this tool did not build). ``method_preset`` is the one lookup; ``--lr``, ``-o`` and the other
explicit options go on top of what it returns (``apply_overrides``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import MethodConfig, get_method

TINY = "tiny"
PAPER = "paper"

# The method of a run that names none (`make run`): the best validation harmonic mean of forget
# efficacy and retention among the tiny presets chosen with `benchmarks/derive_presets.py
# --min-retention 0.8` (RMU 0.9) on the default vanilla model (tiny_presets.json: MLLMEraser 0.996;
# RMU 0.967, GradDiff 0.889, MIP-Editor 0.862, KL 0.825, NPO 0.654, GA 0.622, MANU 0.618,
# MMUnlearner 0.433), so a first
# report shows forgetting with retained utility. `--method ga` is one flag away.
DEFAULT_METHOD = "mllmeraser"

# Tuned on the built-in world with the default tiny LLaVA (forget 10%): enough ascent to
# push forget accuracy down in both modalities without erasing everything else.
TINY_DEFAULTS: dict[str, dict] = {
    # GA on the default vanilla model (forget VQA/QA, retain VQA/QA; vanilla 96/100, 98/99.8):
    # lr 5e-4 x 1 epoch -> 48/100 (QA does not fall); x 2 epochs -> 30/92, 62.9/89.8 (chosen);
    # lr 1e-3 x 1 -> 30/90, 54.9/92.9; lr 7e-4 x 1 -> 38/100.
    "ga": {"lr": 5e-4, "epochs": 2},
    "graddiff": {"lr": 2e-4, "epochs": 2, "retain_weight": 1.0},
    "kl": {"lr": 2e-4, "epochs": 2, "retain_weight": 1.0},
    # RMU on the default vanilla model (multiple choice, forget VQA/QA, retain VQA/QA; vanilla
    # 100/100, 93/100 on the 150-item subsample; c = 2, layer 1 of 4 unless said), printed by
    # `PYTHONPATH=src python benchmarks/rmu_sweep.py --vanilla '{...}' ...` (one line per setting).
    # The earlier default (every token scored, α 100, down_proj of layers 0-1, lr 1e-3 x 2
    # epochs; `run --method rmu --tasks mcq`, all items): 100/100 -> 96/100, 92.4/100 -> 92.7/100.
    # Positions after the chat template (content), down_proj, lr 1e-3 x 2: α 100 -> 98/100,
    # 93/100; α 10 -> 98/100, 92/100; α 1 -> 96/100, 91/100. lr 5e-3 x 2: α 1 -> 64/90, 82/91
    # (every token: 74/94, 85/94); α 10 -> 98/100; layer 2 α 1 -> 70/92, 83/94; α 10 x 6 epochs
    # -> 90/100, 90/99; α 3 x 4 -> 86/90, 84/97; the MLPs of layers 0-1 α 3 -> 86/86, 79/94:
    # forget and retain fall together.
    # Entity positions (image tokens, names, answer-predicting positions), down_proj, lr 5e-3 x
    # 2: α 10 -> 94/100, 91/100; α 3 -> 90/90, 89/96; α 1 -> 62/76, 77/76; answer positions
    # only (RMisU) α 10 -> 94/98, 91/100. lr 2e-3 x 8 epochs, α 3: down_proj -> 70/72, 82/89;
    # the MLPs of layers 0-1 -> 56/68, 89/97, real-world 85/99 -> 81/94 (chosen: forget -44/-32
    # points, retain 96%/97% of vanilla); lr 5e-3 x 2 at layer 2 -> 88/88, 89/98. Around the
    # chosen point: α 10 -> 68/74, 85/99; α 1 -> 60/72, 85/98; 4 epochs -> 66/76, 85/95.
    # (The sweep paired retain items of either modality; with modality-matched pairs the chosen
    # point gives, `run --method rmu`, all items: forget 46/62, retain 88.7/98.9, real-world
    # 85.3/99.3 -> 82.0/92.0.)
    # The loss layer: 30-trial validation sweeps (`mllm-unlearn sweep --method rmu --trials 30
    # -o layer=L`, forget efficacy / retention of the front's best points): layer 1 (the 0.25
    # fraction) 0.30 / 0.90, 0.58 / 0.79; layer 2 0.35 / 0.95, 0.56 / 0.89, 0.81 / 0.84; layer 3
    # 0.45 / 0.91, 0.42 / 0.89. Layer 2 of 4 (the MLPs of layers 0-2 train; fraction 0.5) dominates.
    # lr, epochs, α and c then come from a 60-trial sweep at layer 2 (tiny_presets.json; chosen
    # among trials keeping retention >= 0.9 on validation people, RMU's bar in issue 17).
    "rmu": {"lr": 2e-3, "epochs": 8, "extra": {"steering_coeff": 2.0, "alpha": 3.0, "positions": "entity", "layer": 0.5}},
    # The vision mask: ascent confined to the salient weights of the vision tower and projector
    # cannot touch text-only answers; lr 1e-3 met the paper's claim (sweep in the README).
    "mmunlearner": {"lr": 1e-3, "epochs": 2, "extra": {"mask": "vision", "gamma": 1.0}},
    # MIP-Editor: paths from every forget sample (path_samples=64 gave fewer path neurons and
    # forgot little), RMisU at layer 2 of 4, c = 2 x mean hidden norm, α = β = 0.5. On the
    # default vanilla model (forget VQA/QA, retain VQA/QA; vanilla 96/100, 98/99.8; GA's harmonic
    # mean 0.41): lr 2e-3 x 4 epochs -> 46/58, 66/77.6 (0.57, chosen); x 2 -> 52/66, 66.4/79.3;
    # lr 1e-3 x 4 -> 54/62, 66.7/76; top_k 10 -> 40/58, 64.2/70. On the previous vanilla model lr
    # 1e-3 x 2 had forgotten little (0.08) and lr 2e-3 x 4 was chosen there too.
    # The paper's 7B values are mip_editor.PAPER_7B_PRESET.
    "mip-editor": {"lr": 2e-3, "epochs": 4, "batch_size": 16, "extra": {"layer": 2, "steering_coeff": 2.0}},
    "npo": {"lr": 2e-4, "epochs": 2, "extra": {"beta": 0.4, "reference": "vanilla"}},
    # MANU: the 7B values (top 2%, the paper) barely move a 4-layer, 256-neuron LM whose knowledge
    # is spread over few neurons. A grid (alpha 2-50%, global / per layer, hard / soft, positions,
    # combine, weights) on earlier vanilla models chose per-layer selection, hard zero, the
    # released code's weights (frequency off) and every retain item as reference. Alpha on the
    # default vanilla model (forget VQA/QA, retain VQA/QA; vanilla 96/100, 98/99.8; harmonic
    # mean of forget efficacy and retention averaged over modalities, GA 0.41): per layer 0.6 ->
    # 60/78, 74/92 (0.43, chosen); 0.7 -> 58/76, 66.2/86.4 (0.44); 0.8 -> 44/48, 54.9/58.2
    # (0.55, retain collapsing); 0.85 -> 34/44, 49.1/53.6. On the previous vanilla model (60
    # stage-2 epochs) 0.45 had forgotten little and 0.8 was best. See README, MANU.
    "manu": {"batch_size": 32, "extra": {"alpha": 0.6, "selection": "per_layer", "scale": 0.0, "combine": "max",
                                         "weights": {"abs": 1.0, "freq": 0.0, "var": 1.0, "rms": 1.0},
                                         "retain_items": 0, "positions": "all"}},
    # MLLMEraser on the default tiny LLaVA (LM width 128). The paper's linear gate cannot work at
    # this width: the retain prompts' last-token states fill the hidden space, retain inputs got
    # 55-110% of the forget inputs' steering in every setting (strength 1.5-3, null_energy
    # 0.001-0.01, null_ratio 0.3, ridge 1e-4-1, retain_penalty 1-1000; best: strength 1.5 ->
    # forget VQA/QA 96/100 -> 76/100 at 84%/96% of vanilla retain accuracy). Lifted gate (4096
    # random ReLU features, soft null space retain_penalty 1000, ridge 0.01; vanilla MCQ forget
    # 96/100, retain 98/99.8, real-world 94/98.7; generation ROUGE-L VQA/QA forget 0.74/0.38,
    # retain 0.81/0.28), as MCQ forget, MCQ retain, generation forget -> retain:
    #   gate from multiple-choice prompts only (forms mcq): layers 1,2 x 30 -> 64/88, 95.1/99.8,
    #   but retained people's generation prompts were steered too (retain ROUGE-L VQA 0.81 ->
    #   0.45); x 35 -> 60/88, 94.2/99.6; layers 1-3 x 28 -> 70/90, 96.4/99.8.
    #   + retain generation prompts (retain_forms mcq,generation): x 30 -> 66/98, 95.1/99.6,
    #   0.59/0.32 -> 0.81/0.26. + open questions in retain_forms: x 30 -> 82/100 (they overlap
    #   the forget multiple choices; forms qa,mcq for both: 72/98 at x 35).
    #   forms and retain_forms mcq,generation: x 30 -> 68/96, 94.9/99.8, 0.69/0.20 -> 0.80/0.27
    #   (chosen; lift seed 1: 80/96, 95.3/99.8, 0.76/0.17 -> 0.79/0.28; seed 2: 72/100, 96/99.8,
    #   0.66/0.17 -> 0.79/0.28, i.e. QA classification does not fall); x 40 -> 66/94, 94.4/99.6
    #   (seed 1: 78/92, 93.8/99.6; seed 2: 68/100, 94.7/99.8); x 50 -> 66/92, 91.6/98.9.
    #   8192 features: x 20 -> 72/98, 95.3/99.6; x 25 -> 72/96, 94.7/99.6 (seed 2 x 30: 66/90,
    #   91.1/98.2): no better than 4096.
    #   All of the above read the gate from the last position (pool last), where held-out QA
    #   prompts of retained people got 26-36% of the forget prompts' steering. Reading the mean
    #   over the prompt's positions (pool mean; 4-7% held out) with the same gate, as MCQ forget,
    #   MCQ retain, MCQ real-world, per lift seed 0 / 1 / 2:
    #   x 15 -> 74/90, 95.3/99.3, 94.0/99.3 / 32/62, 95.6/99.8, 94.7/98.7 / 46/54, 95.6/99.3,
    #   92.0/98.7 (chosen: every seed >= 97% of vanilla retain and real-world; generation ROUGE-L,
    #   seed 0: 0.71/0.36 -> 0.80/0.27); x 20 -> 60/80, 94.2/99.1, 94.7/99.3 / 30/32, 94.4/99.8,
    #   92.7/98.7 / 38/50, 93.3/98.9, 89.3/97.3 (seed 2 at 95.0% of vanilla real-world VQA);
    #   x 25 -> 36/60, 91.8/98.9; x 30 -> 28/40, 88.4/97.8. Seed 2 at x 15: retain_penalty 100 ->
    #   18/28, 77.6/86.9; 10000 -> 82/100, 98/99.8; ridge 0.1 or 0.001 -> as 0.01; layer 1 only ->
    #   50/80, 97.1/99.8.
    #   Generation at x 15 barely moves (ROUGE-L VQA/QA forget 0.74/0.38 -> 0.71/0.36). Its own
    #   strength (task_strengths, the paper's per-task strength), as forget, retain, real-world
    #   ROUGE-L per lift seed 0 / 1 / 2: generation x 25 -> 0.46/0.37, 0.77/0.26, 0.83/0.36 /
    #   0.19/0.16, 0.78/0.25, 0.83/0.33 / 0.56/0.32, 0.80/0.27, 0.83/0.36 (chosen); x 20 -> seed 1
    #   0.20/0.20, 0.80/0.26; seed 2 0.64/0.33, 0.82/0.28; x 40 (seed 0) -> 0.18/0.27, 0.71/0.25,
    #   0.81/0.31.
    #   Fill-in-the-blank prompts were in neither form list, so the gate steered retained people's
    #   too (on this version's default world, after the swept strength 23.6: retain fill-in-the-blank
    #   100 -> 35.6% while retain classification kept 97%); cloze is now in both lists.
    "mllmeraser": {"batch_size": 32, "extra": {"layers": "1,2", "strength": 15.0, "lift": 4096, "pool": "mean",
                                               "task_strengths": {"generation": 25.0},
                                               "forms": "mcq,generation,cloze",
                                               "retain_forms": "mcq,generation,cloze",
                                               "null_energy": 1.0, "retain_penalty": 1000.0, "ridge": 0.01,
                                               "renderings": 4, "pgd_steps": 3, "pgd_eps": 0.05}},
}



def _mip_editor_paper() -> dict[str, Any]:
    from .mip_editor import PAPER_7B_PRESET

    # The IGI/IFI path search backpropagates through both towers without checkpointing:
    # benchmarks/scale_memory.py predicts ~12 GiB per LLaVA-7B sample, 4 samples per pass at most
    # on 80 GB. Passes of at most 1024 tokens (one LLaVA sample, three Qwen ones) keep it on one GPU.
    return {**PAPER_7B_PRESET, "max_batch_tokens": 1024}


# The papers' / benchmarks' settings for 7B-class checkpoints (sources: shared research notes on
# each method's paper and released code). Options not named keep each method's own defaults.
PAPER_DEFAULTS: dict[str, Any] = {
    # MLLMU-Bench's baselines (MMUnlearner's copies, README): AdamW lr 1e-5, batch 4, 1 epoch.
    "ga": {"lr": 1e-5, "epochs": 1, "batch_size": 4},
    "graddiff": {"lr": 1e-5, "epochs": 1, "batch_size": 4, "retain_weight": 1.0},
    "kl": {"lr": 1e-5, "epochs": 1, "batch_size": 4, "retain_weight": 1.0},
    # NPO's β = 0.4. The benchmarks' reference is a retain-only fine-tune the tool cannot train for
    # a user's checkpoint: the vanilla model unless -o reference=PATH names one.
    "npo": {"lr": 1e-5, "epochs": 1, "batch_size": 4, "extra": {"beta": 0.4, "reference": "vanilla"}},
    # WMDP's RMU: lr 5e-5, batch 4, loss at layer 7 (layers 5-7 trained). Its c = 6.5 and α = 1200
    # are absolute to Zephyr's hidden norm and loss scale; ours are relative (module defaults).
    "rmu": {"lr": 5e-5, "epochs": 1, "batch_size": 4, "extra": {"layer": 7}},
    # MMUnlearner (README): lr 1e-5, batch 4, 1 epoch, γ = 1, the language mask for the main runs.
    "mmunlearner": {"lr": 1e-5, "epochs": 1, "batch_size": 4, "extra": {"mask": "language", "gamma": 1.0}},
    "mip-editor": _mip_editor_paper,  # mip_editor.PAPER_7B_PRESET
    # MANU: the top 2% of neurons, one global threshold.
    "manu": {"extra": {"alpha": 0.02, "selection": "global"}},
    # MLLMEraser: strength 0.2 on every layer but the first (0.3 for cloze), the paper's settings.
    # Its statistics/PGD passes at batch 16 are predicted at 77 GiB on Qwen2.5-VL-7B
    # (benchmarks/scale_memory.py): passes of at most 4096 tokens stay below 80 GB.
    "mllmeraser": {"max_batch_tokens": 4096,
                   "extra": {"layers": "all", "strength": 0.2, "task_strengths": {"cloze": 0.3}}},
}

PRESETS: dict[str, dict[str, Any]] = {TINY: TINY_DEFAULTS, PAPER: PAPER_DEFAULTS}

# The tiny preset's searched values (learning rate, epochs, strengths...: what
# ``search_spaces.SEARCH_SPACES`` covers), chosen by ``mllm-unlearn sweep`` on the built-in world's
# validation people and written by ``benchmarks/derive_presets.py``, with the command, rule and
# validation objectives of each choice. They go over ``TINY_DEFAULTS`` (whose comments record the
# hand sweeps behind the structural options), so no tiny default is tuned on a reported split.
# An entry's ``values`` were chosen on ``PRESET_FAMILY``'s tiny model; ``families`` holds the
# choices derived on another family's (a steering strength that suits one tiny model's activations
# need not suit another's), which that family's runs take instead.
TINY_PRESETS_FILE = Path(__file__).with_name("tiny_presets.json")
PRESET_FAMILY = "llava"


@lru_cache(maxsize=1)
def tiny_preset_entries() -> dict[str, dict[str, Any]]:
    """``TINY_PRESETS_FILE`` as written (method name -> its choice, and other families' choices)."""
    return json.loads(TINY_PRESETS_FILE.read_text()) if TINY_PRESETS_FILE.is_file() else {}


def _tiny_choice(entry: dict[str, Any], family: str | None) -> tuple[str, dict[str, Any]]:
    """(the family whose sweeps chose them, the values) of one method's entry, as ``family``'s runs take them:
    ``family``'s own choice where one was derived on its model, else the one derived on ``PRESET_FAMILY``'s."""
    own = entry.get("families", {}).get(family)
    return (family, own["values"]) if own is not None else (PRESET_FAMILY, entry["values"])


def swept_tiny_values(family: str | None = None) -> dict[str, dict[str, Any]]:
    """Method name -> the sweep-chosen values of ``TINY_PRESETS_FILE`` (nested: ``{"lr": .., "extra": {..}}``)
    that ``family``'s runs take."""
    return {name: _tiny_choice(entry, family)[1] for name, entry in tiny_preset_entries().items()}


def swept_choice_family(name: str, family: str | None) -> str | None:
    """The family on whose tiny model method ``name``'s sweep-chosen values (as ``method_preset``
    takes them for ``family``) were derived; None when ``TINY_PRESETS_FILE`` has no choice for it."""
    entry = tiny_preset_entries().get(name)
    return None if entry is None else _tiny_choice(entry, family)[0]


def preset_name_for(model_built_here: bool) -> str:
    """``tiny`` for a model this tool built (its checkpoint holds injection.json), else ``paper``."""
    return TINY if model_built_here else PAPER


def method_preset(name: str, preset: str, seed: int = 0, family: str | None = None) -> MethodConfig:
    """The method's hyperparameters from the named preset (``tiny`` or ``paper``): the one lookup
    the pipeline uses, so other preset sources (a file) can plug in here. ``family``: the tiny
    model's family, whose own sweep-chosen values win where derived (``swept_tiny_values``)."""
    get_method(name)  # a clear error for an unknown name
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values = PRESETS[preset].get(name, {})
    values = values() if callable(values) else values
    cfg = MethodConfig(seed=seed, **copy.deepcopy(values))
    # The sweep-chosen values go over the structural ones as a user's options would.
    return apply_overrides(cfg, swept_tiny_values(family).get(name, {})) if preset == TINY else cfg


def method_defaults(name: str, seed: int = 0) -> MethodConfig:
    """The tiny preset (the built-in world's tuned values)."""
    return method_preset(name, TINY, seed)


def apply_overrides(cfg: MethodConfig, overrides: dict[str, Any]) -> MethodConfig:
    """``cfg`` with the user's explicit options on top: top-level fields replaced, ``extra``
    merged key by key (so ``-o beta=0.2`` keeps the preset's other options)."""
    known = {f.name for f in fields(MethodConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown method config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    top = {k: v for k, v in overrides.items() if k != "extra"}
    return replace(cfg, **top, extra={**cfg.extra, **copy.deepcopy(overrides.get("extra", {}))})
