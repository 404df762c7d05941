"""Loader for MLLMU-Bench's published parquet layout (a real download or the built-in world).

``<root>/<config>/*.parquet`` with configs ``forget_{5,10,15}``, ``retain_{95,90,85}``,
``Test_Set``, ``Retain_Set`` and ``ft_Data``, and optionally ``Holdout_Set`` (our addition, in
``ft_Data``'s format: people the vanilla model never saw, the non-members of membership
inference; MLLMU-Bench itself has none, since all its people are fine-tuned on). Every malformed input raises
``BenchmarkFormatError`` naming the file, row and field.

The published files as they are: ``metadata`` entries that are not QA pairs are skipped and
counted; a training row's person comes from its ``ID`` column, the ``ID`` of its metadata entries
or the profile image it shows; names from a ``name`` column, the biography (key spellings
normalised) or the name question; ``Retain_Set``'s real people are ``real:<ID>`` (their IDs
repeat the fictitious people's). What was skipped and which rule applied is in ``Benchmark.meta``.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow.parquet as pq

from .items import OPTION_KEYS, Benchmark, Item
from .layouts import (
    CLOZE_INSTRUCTION,
    FULL_SET,
    GENERATION_INSTRUCTION,
    HOLDOUT_CONFIG,
    MLLMU_FORGET_PERCENTS,
    PROFILE_COLUMNS,
    VALIDATION_CONFIGS,
    mllmu_forget_config,
    mllmu_retain_config,
)
from .portraits import from_png
from .text_forms import PERSON_NAME, is_name_question, name_from_answer, text_only_forms


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


def row_field(row: dict[str, Any], path: str) -> Any:
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
    data = row_field(row, path)
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data:
        raise BenchmarkFormatError(f"{row['__where__']} (ID {row.get('ID')}): image {path!r} has no bytes")
    try:
        return from_png(data)
    except Exception as error:
        raise BenchmarkFormatError(f"{row['__where__']} (ID {row.get('ID')}): image {path!r} cannot be decoded ({error})") from error


def profile_items(row: dict[str, Any], split: str, image: Any, image_key: str, person_id: str | None = None) -> list[Item]:
    """Evaluation items of one profile row: classification, cloze and generation, per modality
    (``person_id``: the row's ``ID`` unless given, e.g. namespaced for the real-world split)."""
    pid = person_id if person_id is not None else str(row_field(row, "ID"))
    items: list[Item] = []
    for key, modality in (("Image_Textual_Questions", "vqa"), ("Pure_Text_Questions", "qa")):
        for index, _ in enumerate(row_field(row, f"Classification_Task.{key}")):
            where = f"Classification_Task.{key}.{index}"
            options = {k: str(v) for k, v in row_field(row, f"{where}.Options").items() if v is not None}
            if sorted(options) != list(OPTION_KEYS):
                raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {where}.Options must have keys A-D, has {sorted(options)}")
            correct = str(row_field(row, f"{where}.Correct_Answer")).strip()
            if correct not in options:  # some dumps store the option text rather than the letter
                matches = [k for k, v in options.items() if v.strip() == correct]
                if not matches:
                    raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {where}.Correct_Answer {correct!r} is not an option")
                correct = matches[0]
            items.append(Item(pid, split, modality, "mcq", str(row_field(row, f"{where}.Question")), correct,
                              image if modality == "vqa" else None, options, image_key if modality == "vqa" else None))
    for task, column, suffix in (("cloze", "Mask_Task", CLOZE_INSTRUCTION), ("generation", "Generation_Task", GENERATION_INSTRUCTION)):
        for index in range(len(row.get(column) or [])):
            kind = row_field(row, f"{column}.{index}.Type")
            if kind not in ("Image_Textual", "Pure_Text"):
                raise BenchmarkFormatError(f"{row['__where__']} (ID {pid}): {column}.{index}.Type must be "
                                           f"Image_Textual or Pure_Text, got {kind!r}")
            modality = "vqa" if kind == "Image_Textual" else "qa"
            question = str(row_field(row, f"{column}.{index}.Question"))
            if task == "cloze":
                question = question.replace("__", "[Blank]")
            items.append(Item(pid, split, modality, task, f"{question}\n{suffix}", str(row_field(row, f"{column}.{index}.Ground_Truth")),
                              image if modality == "vqa" else None, None, image_key if modality == "vqa" else None,
                              meta={"raw_question": question}))
    return items


# --- training data (ft_Data and our pretrain_Data / Holdout_Set in its format) ----------------
def metadata_pairs(row: dict[str, Any]) -> tuple[list[dict[str, Any]], int, set[str]]:
    """The QA pairs of a row's ``metadata`` JSON list, how many entries were skipped, and the
    ``ID``s the entries carry. Entries without a non-empty ``Question`` and ``Answer`` (e.g. an
    ``Additional_question`` record) are skipped, as MLLMU-Bench's ``data_preprocess.py`` does."""
    where = row["__where__"]
    raw = row_field(row, "metadata")
    try:
        entries = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(f"{where}: column 'metadata' is not valid JSON ({error})") from error
    if not isinstance(entries, list):
        raise BenchmarkFormatError(f"{where}: column 'metadata' must be a JSON list of {{Question, Answer}} objects, "
                                   f"got a {type(entries).__name__}")
    pairs, skipped, ids = [], 0, set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BenchmarkFormatError(f"{where}: metadata[{index}] must be a JSON object, got {type(entry).__name__} "
                                       f"{str(entry)[:60]!r}")
        if entry.get("ID") not in (None, ""):
            ids.add(str(entry["ID"]).strip())
        texts = {}
        for key in ("Question", "Answer"):
            value = entry.get(key)
            if isinstance(value, (dict, list, bool)):
                raise BenchmarkFormatError(f"{where}: metadata[{index}].{key} must be text, got {type(value).__name__}")
            texts[key] = "" if value is None else str(value).strip()
        if not texts["Question"] or not texts["Answer"]:
            skipped += 1
            continue
        pairs.append({**entry, **texts})
    return pairs, skipped, ids


def _normalise_id(pid: str, known: set[str]) -> str:
    """``pid`` as spelled among ``known`` IDs when it differs only by zero padding (93 vs "093")."""
    if not known or pid in known or not pid.isdigit():
        return pid
    matches = [k for k in known if k.isdigit() and int(k) == int(pid)]
    return matches[0] if len(matches) == 1 else pid


def _image_digests(row: dict[str, Any], path: str) -> tuple[str, str]:
    """SHA-1 of an image's encoded bytes and of its decoded pixels (re-encoded copies match the latter)."""
    data = row_field(row, path)
    data = data.get("bytes") if isinstance(data, dict) else data
    pixels = decode_image(row, path)
    return (hashlib.sha1(data or b"").hexdigest(),
            hashlib.sha1(f"{pixels.size}{pixels.mode}".encode() + pixels.tobytes()).hexdigest())


class _ImageIndex:
    """Profile images by digest, to find whose portrait a training row shows (built on first use)."""

    def __init__(self, profiles: list[dict[str, Any]]):
        self.profiles = profiles
        self.index: dict[str, str | None] | None = None

    def person(self, row: dict[str, Any]) -> str | None:
        if self.index is None:
            self.index = {}
            for profile in self.profiles:
                for digest in _image_digests(profile, "image"):
                    pid = str(row_field(profile, "ID"))
                    self.index[digest] = pid if self.index.get(digest, pid) == pid else None  # None: ambiguous
        for digest in _image_digests(row, "image"):
            if self.index.get(digest):
                return self.index[digest]
        return None


ID_RULES = ("ID column", "metadata ID", "image match")


def resolve_person_ids(rows: list[dict[str, Any]], ids_in_metadata: list[set[str]],
                       profiles: list[dict[str, Any]]) -> tuple[list[str | None], dict[str, int]]:
    """Each training row's person: its ``ID`` column, else the ``ID`` its metadata entries carry,
    else the profile (of ``profiles``) whose image it shows. None where no rule applies; also how
    many rows each rule resolved."""
    known = {str(r["ID"]) for r in profiles if r.get("ID") is not None}
    images = _ImageIndex(profiles)
    out: list[str | None] = []
    used = {rule: 0 for rule in ID_RULES}
    for row, ids in zip(rows, ids_in_metadata):
        if row.get("ID") not in (None, "") and str(row["ID"]).strip():
            pid, rule = str(row["ID"]).strip(), "ID column"
        elif ids:
            if len(ids) > 1:
                raise BenchmarkFormatError(f"{row['__where__']}: the metadata entries name several IDs {sorted(ids)}")
            pid, rule = next(iter(ids)), "metadata ID"
        else:
            pid, rule = (images.person(row) if profiles else None), "image match"
        if pid is not None:
            used[rule] += 1
            pid = _normalise_id(pid, known)
        out.append(pid)
    return out, {rule: n for rule, n in used.items() if n}


NAME_KEYS = ("name", "full name")


def biography_fields(value: Any) -> dict[str, Any] | str | None:
    """A ``biography`` as a dict with normalised keys (stripped, no trailing colon, lower case;
    "Name:" and "name " both read as "name") when it is a struct or a JSON object, else its text."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, dict):
        return {str(k).strip().rstrip(":").strip().lower(): v for k, v in value.items()}
    return str(value)


def biography_name(value: Any) -> str | None:
    """The person's name in a biography: its name key, or a "Name: ..." line of plain text."""
    bio = biography_fields(value)
    if isinstance(bio, dict):
        for key in NAME_KEYS:
            if bio.get(key) is not None and str(bio[key]).strip():
                return str(bio[key]).strip()
    elif bio:
        match = re.search(r"(?im)^\s*(?:full\s+)?name\s*:\s*(.+?)\s*$", bio)
        if match:
            return match.group(1)
    return None


def profile_names(rows: list[dict[str, Any]], prefix: str = "") -> dict[str, tuple[str, str]]:
    """person id -> (name, where it came from): the ``name`` column, else the biography."""
    names = {}
    for row in rows:
        pid = prefix + str(row_field(row, "ID"))
        if row.get("name"):
            names[pid] = (str(row["name"]).strip(), "name column")
        elif (name := biography_name(row.get("biography"))):
            names[pid] = (name, "biography")
    return names


def pair_items(rows: list[dict[str, Any]], split: str, person_ids: list[str],
                   pairs_of: list[list[dict[str, Any]]], names: dict[str, str]) -> list[Item]:
    """QA pairs of ``ft_Data``-style rows (image + JSON ``metadata``) as training items; each carries
    its person's name (``meta[PERSON_NAME]``, None if unknown) for its text-only form."""
    items: list[Item] = []
    for row, pid, pairs in zip(rows, person_ids, pairs_of):
        image = decode_image(row, "image")
        for pair in pairs:
            modality = "qa" if pair.get("Type") == "Pure_Text" else "vqa"
            meta = {k: pair[k] for k in ("Attribute", "Value") if k in pair}
            meta[PERSON_NAME] = names.get(pid)
            key = f"{pid.removeprefix(REAL_WORLD_PREFIX)}.png" if modality == "vqa" else None
            items.append(Item(pid, split, modality, "train", pair["Question"], pair["Answer"],
                              image if modality == "vqa" else None, None, key, meta))
    return items


def generation_as_training(rows: list[dict[str, Any]], split: str, names: dict[str, str]) -> list[Item]:
    """Fallback training data when no ``ft_Data`` row can be tied to a person: the profiles' generation QA."""
    items: list[Item] = []
    for row in rows:
        image = decode_image(row, "image")
        pid = str(row["ID"])
        for index, entry in enumerate(row_field(row, "Generation_Task")):
            modality = "vqa" if entry.get("Type") == "Image_Textual" else "qa"
            items.append(Item(pid, split, modality, "train", str(row_field(row, f"Generation_Task.{index}.Question")),
                              str(row_field(row, f"Generation_Task.{index}.Ground_Truth")), image if modality == "vqa" else None,
                              meta={PERSON_NAME: names.get(pid)}))
    return items


# IDs are unique only within a config: Retain_Set's real people get their own namespace, so a
# real person never shares an id with a fictitious one (statistics, tables, names, forget ids).
REAL_WORLD_PREFIX = "real:"


class _TrainingReader:
    """Reads the ``ft_Data``-format configs, counting what it skipped and how it found people."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}  # config -> metadata entries that are not QA pairs
        self.id_rules: dict[str, Any] = {}  # config -> rows per person-id rule (or the fallback)
        self.name_questions: dict[str, dict[str, str]] = {}  # config -> person id -> name from a name question

    def parse(self, rows: list[dict[str, Any]], config: str) -> tuple[list[list[dict[str, Any]]], list[set[str]]]:
        parsed = [metadata_pairs(row) for row in rows]
        self.skipped[config] = sum(skipped for _, skipped, _ in parsed)
        return [pairs for pairs, _, _ in parsed], [ids for _, _, ids in parsed]

    def read(self, rows: list[dict[str, Any]], config: str, split: str, profiles: list[dict[str, Any]],
             names: dict[str, str], prefix: str = "", row_ids: bool = False) -> list[Item] | None:
        """Training items of a config, or None when no row can be tied to a person (``row_ids``:
        such rows become people of their own, ``<config>:<row>``)."""
        pairs_of, ids_in_metadata = self.parse(rows, config)
        person_ids, used = resolve_person_ids(rows, ids_in_metadata, profiles)
        unresolved = [i for i, pid in enumerate(person_ids) if pid is None]
        if unresolved and row_ids:
            person_ids = [pid if pid is not None else f"{config}:{i}" for i, pid in enumerate(person_ids)]
            used["row index"] = len(unresolved)
        elif len(unresolved) == len(rows):
            return None
        elif unresolved:
            raise BenchmarkFormatError(
                f"{rows[unresolved[0]]['__where__']}: no person for this row ({len(unresolved)} of {len(rows)} rows of "
                f"{config!r}): no 'ID' column value, no 'ID' in its metadata entries, and its image matches no "
                "profile image")
        self.id_rules[config] = used
        person_ids = [prefix + str(pid) for pid in person_ids]
        asked = self.name_questions[config] = {}
        for pid, pairs in zip(person_ids, pairs_of):
            if pid not in names and pid not in asked:
                for pair in pairs:  # as MANU's unimodal dataset: the answer to the first name question
                    if is_name_question(pair["Question"]) and (name := name_from_answer(pair["Answer"])):
                        asked[pid] = name
                        break
        return pair_items(rows, split, person_ids, pairs_of, {**names, **asked})


def full_set_reader(root: Path) -> Callable[[Sequence[str]], list[Item]] | None:
    """Reads the ``Full_Set`` profiles of given IDs on demand; None when ``root`` has no ``Full_Set``."""
    folder = Path(root) / FULL_SET
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return None
    return partial(read_full_set, Path(root))


def read_full_set(root: Path, ids: Sequence[str]) -> list[Item]:
    """Evaluation items (every task, both modalities) of the ``Full_Set`` rows whose ID is in
    ``ids``, in the config's row order; only those rows' images are decoded."""
    wanted = {str(i) for i in ids}
    rows = read_config(root, FULL_SET, PROFILE_COLUMNS) or []
    return [item for row in rows if str(row_field(row, "ID")) in wanted
            for item in profile_items(row, "full_set", decode_image(row, "image"), f"{row['ID']}.png")]


def load_mllmu(root: str | Path, forget_percent: int = 10, seed: int = 0) -> Benchmark:
    """Read an MLLMU-Bench directory into evaluation splits and training items."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkFormatError(f"benchmark directory {root} does not exist")
    if forget_percent not in MLLMU_FORGET_PERCENTS:
        raise BenchmarkFormatError(f"forget percent must be 5, 10 or 15 (MLLMU-Bench's splits), got {forget_percent}")
    rng = random.Random(seed)  # MLLMU-Bench picks the Test_Set image unseeded; we seed it
    forget_rows = read_config(root, mllmu_forget_config(forget_percent), PROFILE_COLUMNS)
    retain_rows = read_config(root, mllmu_retain_config(forget_percent), PROFILE_COLUMNS)
    test_rows = read_config(root, "Test_Set", ("ID", "images", "Classification_Task"))
    real_rows = read_config(root, "Retain_Set", PROFILE_COLUMNS)
    ft_rows = read_config(root, "ft_Data", ("image", "metadata"))
    pretrain_rows = read_config(root, "pretrain_Data", ("image", "metadata"), optional=True) or []
    holdout_rows = read_config(root, HOLDOUT_CONFIG, ("image", "metadata"), optional=True) or []
    # Validation people (optional; the built-in world writes them): trained on, in no reported split.
    validation_rows = {group: read_config(root, config, PROFILE_COLUMNS, optional=True) or []
                       for group, config in VALIDATION_CONFIGS.items()}
    validation_ids = {str(row_field(r, "ID")) for group in ("forget", "retain") for r in validation_rows[group]}
    forget_ids = [str(row_field(r, "ID")) for r in forget_rows]
    forget_set = set(forget_ids)

    def profiles(rows: list[dict[str, Any]], split: str, prefix: str = "") -> list[Item]:
        return [item for r in rows
                for item in profile_items(r, split, decode_image(r, "image"), f"{r['ID']}.png", prefix + str(r["ID"]))]

    test_items: list[Item] = []
    for row in test_rows:
        if str(row_field(row, "ID")) not in forget_set:
            continue
        images = row_field(row, "images")
        if not images:
            raise BenchmarkFormatError(f"{row['__where__']} (ID {row['ID']}): 'images' is an empty list")
        choice = rng.randrange(len(images))
        key = (images[choice] or {}).get("path") or f"{row['ID']}_variant{choice}.png"
        test_items += profile_items(row, "test", decode_image(row, f"images.{choice}"), key)
    if not test_items:
        raise BenchmarkFormatError(f"{root}/Test_Set has no row for the forget IDs {forget_ids[:5]}...")

    found = {**profile_names(forget_rows + retain_rows + validation_rows["forget"] + validation_rows["retain"]),
             **profile_names(real_rows + validation_rows["real_world"], REAL_WORLD_PREFIX)}
    names = {pid: name for pid, (name, _) in found.items()}
    reader = _TrainingReader()
    finetune = reader.read(ft_rows, "ft_Data", "finetune",
                           forget_rows + retain_rows + validation_rows["forget"] + validation_rows["retain"], names)
    if finetune is None:
        reader.id_rules["ft_Data"] = {"Generation_Task fallback": len(forget_rows) + len(retain_rows)}
        finetune = generation_as_training(forget_rows + retain_rows, "finetune", names)
    pretrain = reader.read(pretrain_rows, "pretrain_Data", "pretrain", real_rows, names, REAL_WORLD_PREFIX,
                           row_ids=True) if pretrain_rows else []
    holdout_names = {str(r["ID"]): str(r["name"]) for r in holdout_rows if r.get("ID") and r.get("name")}
    holdout = reader.read(holdout_rows, HOLDOUT_CONFIG, "holdout", [], holdout_names, row_ids=True) if holdout_rows else []
    for config in ("ft_Data", "pretrain_Data"):
        for pid, name in reader.name_questions.get(config, {}).items():
            names.setdefault(pid, name)
            found.setdefault(pid, (name, "name question"))
    people = {str(r["ID"]) for r in forget_rows + retain_rows} | {REAL_WORLD_PREFIX + str(r["ID"]) for r in real_rows}
    sources = [found[p][1] if p in found else "not found" for p in people]
    text_forms = text_only_forms(finetune)
    retain_train = [i for i in finetune if i.person_id not in forget_set and i.person_id not in validation_ids]
    validation = None
    if validation_rows["forget"] and validation_rows["retain"]:
        forget_people = {str(r["ID"]) for r in validation_rows["forget"]}
        retain_people = {str(r["ID"]) for r in validation_rows["retain"]}
        real_people = {REAL_WORLD_PREFIX + str(r["ID"]) for r in validation_rows["real_world"]}
        validation = Benchmark(
            name=f"mllmu:{root.name}:validation",
            eval_splits={"forget": profiles(validation_rows["forget"], "forget"),
                         "retain": profiles(validation_rows["retain"], "retain"),
                         "real_world": profiles(validation_rows["real_world"], "real_world", REAL_WORLD_PREFIX)},
            forget_train=[i for i in finetune if i.person_id in forget_people],
            # As in a reported run: the retain people's data, here with the validation retain group.
            retain_train=retain_train + [i for i in finetune if i.person_id in retain_people],
            finetune_train=finetune, pretrain_train=pretrain or [], forget_ids=sorted(forget_people),
            meta={"root": str(root), "validation": "built-in validation people",
                  "configs": dict(VALIDATION_CONFIGS),
                  "people": {"forget": sorted(forget_people), "retain": sorted(retain_people),
                             "real_world": sorted(real_people)}})
    return Benchmark(
        name=f"mllmu:{root.name}:forget_{forget_percent}",
        eval_splits={
            "forget": profiles(forget_rows, "forget"),
            "test": test_items,
            "retain": profiles(retain_rows, "retain"),
            "real_world": profiles(real_rows, "real_world", REAL_WORLD_PREFIX),
        },
        forget_train=[i for i in finetune if i.person_id in forget_set],
        retain_train=retain_train,
        finetune_train=finetune,
        pretrain_train=pretrain or [],
        forget_ids=forget_ids,
        holdout=holdout or [],
        demonstrations=full_set_reader(root),  # --protocol mllmu's few-shot source
        validation=validation,
        meta={"root": str(root), "forget_percent": forget_percent, "seed": seed,
              # Names from a "name" column (the built-in world), the biography or ft_Data's name
              # question; real-world people under "real:<ID>".
              "names": names,
              "name_sources": {source: sources.count(source) for source in sorted(set(sources))},
              # Metadata entries that are not QA pairs (no Question or Answer), skipped as the authors do.
              "skipped_metadata": reader.skipped,
              "training_person_ids": reader.id_rules,
              "text_only_forms": {"rule": TEXT_FORM_RULE, **text_forms.summary()}},
    )


TEXT_FORM_RULE = ("the data's own Pure_Text pairs where a person has any, else each image + question pair with "
                  "'this person'/'the person'/'this individual'/'the individual'/'this profile' replaced by the "
                  "person's name (none for pairs without such a phrase or asking for the name)")
