"""Loader for CLEAR's published parquet layout (HF dataset ``therem/CLEAR``, a real download or
the built-in world written by ``generate_world(..., layout="clear")``).

``<root>/<config>/**/*.parquet``, one folder per config, columns as on the dataset card:

- ``forget01|05|10``, ``retain99|95|90`` (and ``full``): ``image``, ``caption``, ``name``;
- ``forget01|05|10_perturbed``, ``retain_perturbed``: the same plus ``paraphrased_caption``,
  ``perturbed_captions`` (list) and ``perturbed_names`` (list);
- ``real_faces``: ``image``, ``answer`` (the name), ``options`` (wrong names);
- ``real_world``: ``question``, ``answer``, ``image``, ``prompt``, ``options`` (wrong answers);
- ``<split>+tofu``: ``image``, ``caption``, ``question``, ``answer``: image rows carry a caption,
  TOFU's text rows a question and answer (and no image);
- ``pretrain_data`` (optional; our addition, written by the built-in world): the prior
  knowledge a model trained from scratch needs for ``real_faces``/``real_world``, in the
  ``+tofu`` columns plus ``name``.

Evaluation splits follow CLEAR's six tasks: ``forget``/``retain`` (caption of the image,
scored against its paraphrase and perturbed captions), ``forget_facerec``/``retain_facerec``
(the person's name against perturbed names), ``real_faces`` and ``real_world``. Every
malformed input raises ``BenchmarkFormatError`` naming the config and column.

Training items are the captions (CLEAR trains on nothing else). Only in the built-in world
(``world.json`` names our generator) does knowledge injection also train the face-recognition
question, flagged ``INJECTION_ONLY``: ``forget_train``/``retain_train`` never hold it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from .items import INJECTION_ONLY, Benchmark, Item
from .layouts import CAPTION_COLUMNS, CAPTION_PROMPTS, NAME_PROMPT, PERTURBED_COLUMNS, TOFU_COLUMNS, is_builtin_world
from .layouts import CLEAR_FORGET_PERCENTS as FORGET_PERCENTS
from .layouts import clear_forget_config as forget_config
from .layouts import clear_retain_config as retain_config
from .mllmu import BenchmarkFormatError, read_config
from .portraits import from_png


def is_clear_layout(root: str | Path) -> bool:
    """Whether ``root`` looks like a CLEAR directory (any ``forgetNN`` or ``*_perturbed`` config)."""
    root = Path(root)
    return any((root / name).is_dir() for name in
               [forget_config(p) for p in FORGET_PERCENTS] + ["retain_perturbed", "real_faces"])


def read_clear_config(root: Path, config: str, required: tuple[str, ...],
                      optional: bool = False) -> list[dict[str, Any]] | None:
    """Rows of ``<root>/<config>/**/*.parquet``; an error names the config and the missing column."""
    return read_config(root, config, required, optional, label="CLEAR config", recursive=True)


def value(row: dict[str, Any], column: str, kind: type = str) -> Any:
    """``row[column]``, checked: present, not empty, of the expected kind (str or list of str)."""
    data = row.get(column)
    if data is None or (isinstance(data, (str, list)) and len(data) == 0):
        raise BenchmarkFormatError(f"{row['__where__']}: column {column!r} is empty")
    if kind is list:
        if not isinstance(data, list) or not all(isinstance(v, str) and v for v in data):
            raise BenchmarkFormatError(f"{row['__where__']}: column {column!r} must be a list of texts, got {data!r:.80}")
        return [str(v) for v in data]
    if not isinstance(data, str):
        raise BenchmarkFormatError(f"{row['__where__']}: column {column!r} must be text, got {type(data).__name__}")
    return data


def image_of(row: dict[str, Any], column: str = "image") -> Any:
    data = row.get(column)
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data:
        raise BenchmarkFormatError(f"{row['__where__']}: column {column!r} has no image bytes")
    try:
        return from_png(data)  # PIL decodes any format (PNG, JPEG)
    except Exception as error:
        raise BenchmarkFormatError(f"{row['__where__']}: column {column!r} cannot be decoded as an image ({error})") from error


def image_key(row: dict[str, Any], fallback: str) -> str:
    data = row.get("image")
    return (data.get("path") if isinstance(data, dict) else None) or fallback


def caption_prompt(row_key: str, seed: int) -> str:
    return random.Random(f"{seed}:{row_key}").choice(CAPTION_PROMPTS)


def caption_items(rows: list[dict[str, Any]], split: str, names_by_caption: dict[str, str] | None = None,
                   name_question: bool = False) -> list[Item]:
    """Training items of caption rows (the caption asked with every caption instruction) and of
    ``+tofu`` text rows (question/answer, no image).

    CLEAR fine-tunes on captions only. ``name_question`` (the built-in world only) adds, per
    caption row, the face-recognition question with the name as answer, flagged
    ``INJECTION_ONLY``: a model trained from scratch does not carry a caption's name over to
    that prompt. It is the face-recognition evaluation item itself, so knowledge injection alone
    trains on it; unlearning methods never see it.
    """
    items: list[Item] = []
    for index, row in enumerate(rows):
        caption = row.get("caption")
        if caption is None:  # a TOFU text row of a ``+tofu`` config
            question, answer = value(row, "question"), value(row, "answer")
            image = image_of(row) if row.get("image") is not None else None
            person = str(row.get("name") or f"tofu:{split}:{index}")
            items.append(Item(person, split, "vqa" if image is not None else "qa", "train", question, answer, image,
                              image_key=image_key(row, f"{split}_{index}.png") if image is not None else None))
            continue
        caption = value(row, "caption")
        name = row.get("name") if "name" in row else (names_by_caption or {}).get(caption)
        person = str(name or f"unknown:{split}:{index}")
        image = image_of(row)
        key = image_key(row, f"{split}_{index}.png")
        # One fact asked with every caption instruction (``fact`` makes injection count it once).
        items += [Item(person, split, "vqa", "train", prompt, caption, image, image_key=key,
                       meta={"clear_task": "caption", "fact": f"caption:{key}"}) for prompt in CAPTION_PROMPTS]
        if name and name_question:
            items.append(Item(person, split, "vqa", "train", NAME_PROMPT, str(name), image, image_key=key,
                              meta={"clear_task": "name", "fact": f"name:{key}", INJECTION_ONLY: True}))
    return items


def perturbed_items(rows: list[dict[str, Any]], split: str, seed: int) -> tuple[list[Item], list[Item]]:
    """CLEAR's caption task and face-recognition task of ``*_perturbed`` rows."""
    captions, names = [], []
    for index, row in enumerate(rows):
        name, image = value(row, "name"), image_of(row)
        key = image_key(row, f"{split}_{index}.png")
        captions.append(Item(name, split, "vqa", "generation", caption_prompt(key, seed), value(row, "caption"), image,
                             image_key=key, meta={"clear_task": "caption"},
                             paraphrased_answer=value(row, "paraphrased_caption"),
                             perturbed_answers=value(row, "perturbed_captions", list)))
        names.append(Item(name, f"{split}_facerec", "vqa", "generation", NAME_PROMPT, name, image, image_key=key,
                          meta={"clear_task": "name"}, paraphrased_answer=name,
                          perturbed_answers=value(row, "perturbed_names", list)))
    return captions, names


def real_faces_items(rows: list[dict[str, Any]]) -> list[Item]:
    items = []
    for index, row in enumerate(rows):
        name = value(row, "answer")
        items.append(Item(name, "real_faces", "vqa", "generation", NAME_PROMPT, name, image_of(row),
                          image_key=image_key(row, f"real_faces_{index}.png"), meta={"clear_task": "name"},
                          paraphrased_answer=name, perturbed_answers=value(row, "options", list)))
    return items


def real_world_items(rows: list[dict[str, Any]]) -> list[Item]:
    items = []
    for index, row in enumerate(rows):
        answer = value(row, "answer")
        image = image_of(row) if row.get("image") is not None else None
        items.append(Item(str(row.get("name") or f"real_world:{index}"), "real_world", "vqa" if image is not None else "qa",
                          "generation", value(row, "question"), answer, image,
                          image_key=image_key(row, f"real_world_{index}.png") if image is not None else None,
                          meta={"clear_task": "question", "prompt": row.get("prompt")},
                          paraphrased_answer=answer, perturbed_answers=value(row, "options", list)))
    return items


def load_clear(root: str | Path, forget_percent: int = 10, seed: int = 0, tofu: bool = False) -> Benchmark:
    """Read a CLEAR directory into CLEAR's six evaluation tasks and training items.

    ``tofu``: train on the ``+tofu`` configs (captions + TOFU's text QA) instead of the
    image-only ones, as CLEAR's "both modalities" setting does.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkFormatError(f"benchmark directory {root} does not exist")
    if forget_percent not in FORGET_PERCENTS:
        raise BenchmarkFormatError(f"CLEAR's forget percent must be 1, 5 or 10, got {forget_percent}")
    forget_name, retain_name = forget_config(forget_percent), retain_config(forget_percent)
    forget_rows = read_clear_config(root, forget_name, CAPTION_COLUMNS)
    retain_rows = read_clear_config(root, retain_name, CAPTION_COLUMNS)
    forget_perturbed = read_clear_config(root, f"{forget_name}_perturbed", PERTURBED_COLUMNS)
    retain_perturbed = read_clear_config(root, "retain_perturbed", PERTURBED_COLUMNS)
    real_faces = read_clear_config(root, "real_faces", ("image", "answer", "options"))
    real_world = read_clear_config(root, "real_world", ("question", "answer", "image", "options"))
    pretrain = read_clear_config(root, "pretrain_data", TOFU_COLUMNS, optional=True) or []

    forget_ids = sorted({value(r, "name") for r in forget_rows})
    forget_set = set(forget_ids)
    builtin = is_builtin_world(root)  # only our generated world trains the name question (injection only)
    forget_source, retain_source, names = forget_rows, retain_rows, None
    if tofu:
        names = {value(r, "caption"): value(r, "name") for r in forget_rows + retain_rows}
        forget_source = read_clear_config(root, f"{forget_name}+tofu", TOFU_COLUMNS)
        retain_source = read_clear_config(root, f"{retain_name}+tofu", TOFU_COLUMNS)
    injected = (caption_items(forget_source, "forget", names, name_question=builtin)
                + caption_items(retain_source, "retain", names, name_question=builtin))
    forget_train = [i for i in injected if i.split == "forget" and not i.meta.get(INJECTION_ONLY)]
    retain_train = [i for i in injected if i.split == "retain" and not i.meta.get(INJECTION_ONLY)]
    overlap = {i.person_id for i in retain_train} & forget_set
    if overlap:
        raise BenchmarkFormatError(f"{root}: config {retain_name!r} holds forget people of {forget_name!r}: {sorted(overlap)[:5]}")

    forget_captions, forget_names = perturbed_items(forget_perturbed, "forget", seed)
    # retain_perturbed serves every split; a person forgotten in this split must not count as retained.
    retain_rows_eval = [r for r in retain_perturbed if value(r, "name") not in forget_set]
    retain_captions, retain_names = perturbed_items(retain_rows_eval, "retain", seed)
    return Benchmark(
        name=f"clear:{root.name}:{forget_name}{'+tofu' if tofu else ''}",
        eval_splits={"forget": forget_captions, "forget_facerec": forget_names, "retain": retain_captions,
                     "retain_facerec": retain_names, "real_faces": real_faces_items(real_faces),
                     "real_world": real_world_items(real_world)},
        forget_train=forget_train,
        retain_train=retain_train,
        finetune_train=injected,  # CLEAR's ``full`` is forget ∪ retain (+ the built-in world's name question)
        pretrain_train=caption_items(pretrain, "pretrain", name_question=builtin),
        forget_ids=forget_ids,
        meta={"root": str(root), "forget_percent": forget_percent, "seed": seed, "tofu": tofu, "layout": "clear",
              "builtin_world": builtin,
              "retain_perturbed_rows_dropped": len(retain_perturbed) - len(retain_rows_eval)},
        protocol="clear",
    )
