"""Loader for MLLMU-Bench's published parquet layout (a real download or the built-in world).

``<root>/<config>/*.parquet`` with configs ``forget_{5,10,15}``, ``retain_{95,90,85}``,
``Test_Set``, ``Retain_Set`` and ``ft_Data``, and optionally ``Holdout_Set`` (our addition, in
``ft_Data``'s format: people the vanilla model never saw, the non-members of membership
inference; MLLMU-Bench itself has none, since all its people are fine-tuned on). Every malformed input raises
``BenchmarkFormatError`` naming the file, row and field.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .items import OPTION_KEYS, Benchmark, Item
from .portraits import from_png

EVAL_SPLITS = ("forget", "test", "retain", "real_world")
MCQ_INSTRUCTION = "Just give ONE letter representing the answer directly."


class BenchmarkFormatError(ValueError):
    """The benchmark directory does not follow the expected layout."""


def read_config(root: Path, config: str, required: tuple[str, ...], optional: bool = False,
                label: str = "config", recursive: bool = False) -> list[dict[str, Any]] | None:
    """Rows of ``<root>/<config>/*.parquet`` (``recursive``: at any depth); errors name the file,
    the config (called ``label``, e.g. "CLEAR config") and the missing column."""
    folder = root / config
    files = (sorted(folder.rglob("*.parquet")) if recursive else sorted(folder.glob("*.parquet"))) \
        if folder.is_dir() else []
    if not files:
        if optional:
            return None
        where = "under" if recursive else "in"
        raise BenchmarkFormatError(f"{root}: {label} {config!r} is missing (expected parquet files {where} {folder})")
    rows: list[dict[str, Any]] = []
    suffix = "" if label == "config" else f" ({label.split()[-1]} {config!r})"
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise BenchmarkFormatError(f"{file}: {label} {config!r}: not a readable parquet file ({error})") from error
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise BenchmarkFormatError(
                f"{file}: {label} {config!r} lacks column(s) {missing}; it has {table.column_names}")
        for index, row in enumerate(table.to_pylist()):
            row["__where__"] = f"{file} row {index}{suffix}"
            rows.append(row)
    return rows


def field(row: dict[str, Any], path: str) -> Any:
    """``row['a']['b'][0]['c']`` for path ``a.b.0.c``, with an error naming the field."""
    value: Any = row
    for part in path.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            raise BenchmarkFormatError(f"{row.get('__where__', '?')} (ID {row.get('ID')}): field {path!r} is missing") from None
        if value is None:
            raise BenchmarkFormatError(f"{row.get('__where__', '?')} (ID {row.get('ID')}): field {path!r} is empty")
    return value


def decode_image(row: dict[str, Any], path: str) -> Any:
    data = field(row, path)
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data:
        raise BenchmarkFormatError(f"{row['__where__']} (ID {row.get('ID')}): image {path!r} has no bytes")
    try:
        return from_png(data)
    except Exception as error:
        raise BenchmarkFormatError(f"{row['__where__']} (ID {row.get('ID')}): image {path!r} cannot be decoded ({error})") from error


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    lines = [question] + [f"{key}: {options[key]}" for key in OPTION_KEYS if key in options] + [MCQ_INSTRUCTION]
    return "\n".join(lines)


def profile_items(row: dict[str, Any], split: str, image: Any, image_key: str) -> list[Item]:
    """Evaluation items of one profile row: classification, cloze and generation, per modality."""
    from .synthetic import CLOZE_INSTRUCTION, GENERATION_INSTRUCTION

    pid = str(field(row, "ID"))
    items: list[Item] = []
    for key, modality in (("Image_Textual_Questions", "vqa"), ("Pure_Text_Questions", "qa")):
        for index, question in enumerate(field(row, f"Classification_Task.{key}")):
            where = f"Classification_Task.{key}.{index}"
            options = {k: str(v) for k, v in field(row, f"{where}.Options").items() if v is not None}
            if sorted(options) != list(OPTION_KEYS):
                raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {where}.Options must have keys A-D, has {sorted(options)}")
            correct = str(field(row, f"{where}.Correct_Answer")).strip()
            if correct not in options:  # some dumps store the option text rather than the letter
                matches = [k for k, v in options.items() if v.strip() == correct]
                if not matches:
                    raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {where}.Correct_Answer {correct!r} is not an option")
                correct = matches[0]
            items.append(Item(pid, split, modality, "mcq", str(field(row, f"{where}.Question")), correct,
                              image if modality == "vqa" else None, options, image_key if modality == "vqa" else None))
    for task, column, suffix in (("cloze", "Mask_Task", CLOZE_INSTRUCTION), ("generation", "Generation_Task", GENERATION_INSTRUCTION)):
        for index, entry in enumerate(row.get(column) or []):
            kind = field(row, f"{column}.{index}.Type")
            if kind not in ("Image_Textual", "Pure_Text"):
                raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {column}.{index}.Type must be Image_Textual or Pure_Text, got {kind!r}")
            modality = "vqa" if kind == "Image_Textual" else "qa"
            question = str(field(row, f"{column}.{index}.Question"))
            if task == "cloze":
                question = question.replace("__", "[Blank]")
            items.append(Item(pid, split, modality, task, f"{question}\n{suffix}", str(field(row, f"{column}.{index}.Ground_Truth")),
                              image if modality == "vqa" else None, None, image_key if modality == "vqa" else None,
                              meta={"raw_question": question}))
    return items


def training_items(rows: list[dict[str, Any]], split: str) -> list[Item]:
    """QA pairs of ``ft_Data``-style rows (image + JSON ``metadata``) as training items."""
    items: list[Item] = []
    for row in rows:
        pid = str(row.get("ID", ""))
        image = decode_image(row, "image")
        try:
            pairs = json.loads(field(row, "metadata"))
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"{row['__where__']}: column 'metadata' is not valid JSON ({error})") from error
        for index, pair in enumerate(pairs):
            if "Question" not in pair or "Answer" not in pair:
                raise BenchmarkFormatError(f"{row['__where__']}: metadata[{index}] needs 'Question' and 'Answer'")
            modality = "qa" if pair.get("Type") == "Pure_Text" else "vqa"
            meta = {k: pair[k] for k in ("Attribute", "Value") if k in pair}
            items.append(Item(pid, split, modality, "train", pair["Question"], pair["Answer"],
                              image if modality == "vqa" else None, None, f"{pid}.png" if modality == "vqa" else None, meta))
    return items


def generation_as_training(rows: list[dict[str, Any]], split: str) -> list[Item]:
    """Fallback training data when ``ft_Data`` has no ``ID`` column: the profiles' generation QA."""
    items: list[Item] = []
    for row in rows:
        image = decode_image(row, "image")
        for index, entry in enumerate(field(row, "Generation_Task")):
            modality = "vqa" if entry.get("Type") == "Image_Textual" else "qa"
            items.append(Item(str(row["ID"]), split, modality, "train", str(field(row, f"Generation_Task.{index}.Question")),
                              str(field(row, f"Generation_Task.{index}.Ground_Truth")), image if modality == "vqa" else None))
    return items


PROFILE_COLUMNS = ("ID", "image", "Classification_Task")
HOLDOUT_CONFIG = "Holdout_Set"


def load_mllmu(root: str | Path, forget_percent: int = 10, seed: int = 0) -> Benchmark:
    """Read an MLLMU-Bench directory into evaluation splits and training items."""
    from .mllmu_protocol import full_set_reader

    root = Path(root)
    if not root.is_dir():
        raise BenchmarkFormatError(f"benchmark directory {root} does not exist")
    if forget_percent not in (5, 10, 15):
        raise BenchmarkFormatError(f"forget percent must be 5, 10 or 15 (MLLMU-Bench's splits), got {forget_percent}")
    rng = random.Random(seed)  # MLLMU-Bench picks the Test_Set image unseeded; we seed it
    forget_rows = read_config(root, f"forget_{forget_percent}", PROFILE_COLUMNS)
    retain_rows = read_config(root, f"retain_{100 - forget_percent}", PROFILE_COLUMNS)
    test_rows = read_config(root, "Test_Set", ("ID", "images", "Classification_Task"))
    real_rows = read_config(root, "Retain_Set", PROFILE_COLUMNS)
    ft_rows = read_config(root, "ft_Data", ("image", "metadata"))
    pretrain_rows = read_config(root, "pretrain_Data", ("image", "metadata"), optional=True) or []
    holdout_rows = read_config(root, HOLDOUT_CONFIG, ("image", "metadata"), optional=True) or []
    forget_ids = [str(field(r, "ID")) for r in forget_rows]
    forget_set = set(forget_ids)

    def profiles(rows: list[dict[str, Any]], split: str) -> list[Item]:
        return [item for r in rows for item in profile_items(r, split, decode_image(r, "image"), f"{r['ID']}.png")]

    test_items: list[Item] = []
    for row in test_rows:
        if str(field(row, "ID")) not in forget_set:
            continue
        images = field(row, "images")
        if not images:
            raise BenchmarkFormatError(f"{row['__where__']} (ID {row['ID']}): 'images' is an empty list")
        choice = rng.randrange(len(images))
        key = (images[choice] or {}).get("path") or f"{row['ID']}_variant{choice}.png"
        test_items += profile_items(row, "test", decode_image(row, f"images.{choice}"), key)
    if not test_items:
        raise BenchmarkFormatError(f"{root}/Test_Set has no row for the forget IDs {forget_ids[:5]}...")

    if "ID" in {k for r in ft_rows for k in r}:
        finetune = training_items(ft_rows, "finetune")
    else:
        finetune = generation_as_training(forget_rows + retain_rows, "finetune")
    return Benchmark(
        name=f"mllmu:{root.name}:forget_{forget_percent}",
        eval_splits={
            "forget": profiles(forget_rows, "forget"),
            "test": test_items,
            "retain": profiles(retain_rows, "retain"),
            "real_world": profiles(real_rows, "real_world"),
        },
        forget_train=[i for i in finetune if i.person_id in forget_set],
        retain_train=[i for i in finetune if i.person_id not in forget_set],
        finetune_train=finetune,
        pretrain_train=training_items(pretrain_rows, "pretrain") if pretrain_rows else [],
        forget_ids=forget_ids,
        holdout=training_items(holdout_rows, "holdout") if holdout_rows else [],
        demonstrations=full_set_reader(root),  # --protocol mllmu's few-shot source
        meta={"root": str(root), "forget_percent": forget_percent, "seed": seed,
              # Optional "name" column (the built-in world has it; MLLMU-Bench's release does not).
              "names": {str(r["ID"]): str(r["name"]) for r in forget_rows + retain_rows + real_rows if r.get("name")}},
    )
