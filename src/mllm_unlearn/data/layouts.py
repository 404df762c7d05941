"""The published benchmark layouts' fixed names, in one place: config (folder) names, required
columns, forget-split percentages and the benchmarks' own instructions. Readers (``mllmu.py``,
``clear.py``), the protocol (``mllmu_protocol.py``) and the writer of the built-in world
(``synthetic.py``) all take them from here."""
from __future__ import annotations

import json
from pathlib import Path

# --- MLLMU-Bench (https://huggingface.co/datasets/MLLMU-Bench/MLLMU-Bench) ----------------------
MLLMU_FORGET_PERCENTS = (5, 10, 15)  # its forget_5 / forget_10 / forget_15 configs
EVAL_SPLITS = ("forget", "test", "retain", "real_world")
PROFILE_COLUMNS = ("ID", "image", "Classification_Task")
HOLDOUT_CONFIG = "Holdout_Set"  # ours: people nobody trained on (membership inference's non-members)
FULL_SET = "Full_Set"  # the few-shot demonstrations' source (mllmu_protocol.py)
# The built-in world's validation people (ours; a published MLLMU-Bench directory has none).
VALIDATION_CONFIGS = {"forget": "Validation_Forget", "retain": "Validation_Retain", "real_world": "Validation_Real"}
# MLLMU-Bench's task instructions, as its eval.py and data write them.
MCQ_INSTRUCTION = "Just give ONE letter representing the answer directly."
CLOZE_INSTRUCTION = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_INSTRUCTION = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
# eval.py's text-only generation instruction differs from the image one (no "accurately").
TEXT_GENERATION_INSTRUCTION = "Answer the question based on your trained knowledge in one sentence in ENGLISH."


def mllmu_forget_config(percent: int) -> str:
    return f"forget_{percent}"


def mllmu_retain_config(percent: int) -> str:
    return f"retain_{100 - percent}"


# --- CLEAR (https://huggingface.co/datasets/therem/CLEAR) ---------------------------------------
CLEAR_FORGET_PERCENTS = (1, 5, 10)  # its forget01 / forget05 / forget10 configs
# CLEAR asks for a caption with one of several fixed instructions, drawn at random; we draw
# it seeded (per row) so evaluations repeat exactly. Our own wording of such instructions.
CAPTION_PROMPTS = (
    "Describe the image in detail.",
    "What is shown in this image?",
    "Write a caption for this image.",
    "Describe the person in the image.",
    "Tell me about the person shown here.",
    "Give a short description of this picture.",
    "What can you say about this image?",
    "Who is in this picture and what do you know about them?",
    "Caption this photo.",
)
NAME_PROMPT = "The name of the person on the image is"  # CLEAR's face-recognition question
CAPTION_COLUMNS = ("image", "caption", "name")
PERTURBED_COLUMNS = CAPTION_COLUMNS + ("paraphrased_caption", "perturbed_captions", "perturbed_names")
TOFU_COLUMNS = ("image", "caption", "question", "answer")


def clear_forget_config(percent: int) -> str:
    return f"forget{percent:02d}"


def clear_retain_config(percent: int) -> str:
    return f"retain{100 - percent}"


# --- The built-in world (either layout, written by synthetic.generate_world) ---------------------
GENERATOR = "mllm-unlearn synthetic"  # world.json's "generator": marks a directory generate_world wrote
WORLD_FILE = "world.json"


def is_builtin_world(root: str | Path) -> bool:
    """Whether ``root`` was written by ``generate_world`` (its ``world.json`` names this generator);
    a published benchmark directory has no such file."""
    try:
        return json.loads((Path(root) / WORLD_FILE).read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False
