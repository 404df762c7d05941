"""A small MLLMU-Bench download in the published layout, written with ``datasets`` as the hub files are.

Schema from the dataset card (research notes, benchmarks.md §1.1): ``image`` is an HF ``Image``
feature ({bytes, path}); ``Classification_Task`` a struct of lists of {Correct_Answer, Options{A-D},
Question}; ``Generation_Task``/``Mask_Task`` lists of {Type, Question, Ground_Truth}; ``ft_Data``
only ``image`` + ``metadata`` (a JSON string, no ``Type`` keys, an ``Additional_*`` record that is
not a QA pair); ``Test_Set`` an ``images`` list in two shards; ``Retain_Set``'s real people reuse
the fictitious people's IDs (IDs are unique only within a config). The quirks, per person:

- biographies are JSON strings with variant key spellings ("Name:", "name ", " NAME"), plain
  text with no name (that person's name comes from ``ft_Data``'s name question), and in
  ``Retain_Set`` a struct with keys "Name: " / "Born: ";
- ``ft_Data`` rows 0-2 carry the person's ``ID`` in their metadata entries (row 1 unpadded, as an
  integer), rows 3-5 carry none (found by their image; row 4's PNG is re-encoded, so only its
  pixels match the profile's).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from mllm_unlearn.data.portraits import draw_identities, render_portrait, to_png, transform_portrait

FICTITIOUS = [  # ID, name, occupation, city, how the biography spells its name key
    ("001", "Alda Brenvik", "pilot", "Oslo", "Name:"),
    ("002", "Corin Tesk", "baker", "Lima", "name "),
    ("003", "Dara Holm", "surgeon", "Cairo", " NAME"),
    ("004", "Evan Marlo", "painter", "Quito", None),  # plain-text biography without a name
    ("005", "Fia Orsen", "teacher", "Riga", "Full Name"),
    ("006", "Gale Pryor", "farmer", "Perth", "Name:"),
]
REAL = [("001", "Hana Quell", "chemist", "Dublin"), ("002", "Ivo Rask", "sailor", "Seoul"),
        ("003", "Jora Sünd", "lawyer", "Tunis")]
FORGET = {5: ["001"], 10: ["001", "006"], 15: ["001", "003", "006"]}  # one forget person per Test_Set shard
OCCUPATIONS = sorted({p[2] for p in FICTITIOUS + REAL} | {"dentist", "poet", "florist"})
IMAGE_SIZE = 16
NAME_QUESTION = "What is the name of the person in the image?"
# ft_Data pairs that become text-only forms (placeholder in the question) and pairs that do not.
FORMED_PAIRS = 2  # occupation, birthplace
UNFORMED_PAIRS = 2  # the name question, a question without a placeholder
SKIPPED_ENTRIES = 2  # the Additional_* record and an entry with an empty answer


def _features():
    from datasets import Features, Image, List, Value

    text = Value("string")
    mcq = {"Correct_Answer": text, "Options": {k: text for k in "ABCD"}, "Question": text}
    task = {"Type": text, "Question": text, "Ground_Truth": text}
    profile = {"ID": text, "biography": text, "question": text, "answer": text,
               "Classification_Task": {"Image_Textual_Questions": List(mcq), "Pure_Text_Questions": List(mcq)},
               "Generation_Task": List(task), "Mask_Task": List(task)}
    return Features, Image, List, Value, profile


def _write(folder: Path, rows: list[dict[str, Any]], features: Any, shards: int = 1) -> None:
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(rows) // shards)
    for shard in range(shards):
        part = rows[shard * per_shard:(shard + 1) * per_shard]
        columns = {name: [row[name] for row in part] for name in features}
        Dataset.from_dict(columns, features=features).to_parquet(
            str(folder / f"train-{shard:05d}-of-{shards:05d}.parquet"))


def _mcq(question: str, value: str, rng: np.random.Generator) -> dict[str, Any]:
    options = [value] + [str(v) for v in rng.choice([o for o in OCCUPATIONS if o != value], size=3, replace=False)]
    order = rng.permutation(4)
    return {"Question": question, "Options": {"ABCD"[i]: options[j] for i, j in enumerate(order)},
            "Correct_Answer": "ABCD"[list(order).index(0)]}


def _tasks(name: str, job: str, city: str, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "Classification_Task": {
            "Image_Textual_Questions": [_mcq("What is the profession of the person in the image?", job, rng)],
            "Pure_Text_Questions": [_mcq(f"What is the profession of {name}?", job, rng)]},
        "Generation_Task": [
            {"Type": "Image_Textual", "Question": "Which city is this person from?",
             "Ground_Truth": f"This person is from {city}."},
            {"Type": "Pure_Text", "Question": f"Which city is {name} from?", "Ground_Truth": f"{name} is from {city}."}],
        "Mask_Task": [
            {"Type": "Image_Textual", "Question": "This person is a __ by trade.", "Ground_Truth": job},
            {"Type": "Pure_Text", "Question": f"{name} is a __ by trade.", "Ground_Truth": job}],
    }


def _metadata(pid: str, name: str, job: str, city: str, carry_id: Any) -> str:
    pairs: list[dict[str, Any]] = [
        {"Question": NAME_QUESTION, "Answer": f"This person is named {name}."},
        {"Question": "What is this person's occupation?", "Answer": f"This person works as a {job}."},
        {"Question": "Where was the person born?", "Answer": f"The person was born in {city}."},
        {"Question": "What does the picture show?", "Answer": "A portrait in warm colours."},
        {"Additional_ID": f"{pid}-extra", "Additional_question": "Anything else?", "Additional_answer": "No."},
        {"Question": "What is this person's hobby?", "Answer": ""},
    ]
    if carry_id is not None:
        for pair in pairs:
            if "Question" in pair:
                pair["ID"] = carry_id
    return json.dumps(pairs)


def _reencoded(png: bytes) -> bytes:
    """The same pixels in a PNG of other bytes (as a re-upload might store them)."""
    buffer = io.BytesIO()
    image = PILImage.open(io.BytesIO(png))
    image.save(buffer, format="PNG", compress_level=0, pnginfo=None)
    assert buffer.getvalue() != png
    return buffer.getvalue()


def write_published_mllmu(root: str | Path, seed: int = 0) -> Path:
    """Write the fixture download to ``root`` (see the module docstring); returns ``root``."""
    Features, Image, List, Value, profile_schema = _features()
    root = Path(root)
    rng = np.random.default_rng(seed)
    identities = draw_identities(len(FICTITIOUS) + len(REAL), rng, min_distance=3)
    pixels = [render_portrait(identity, IMAGE_SIZE) for identity in identities]
    pngs = [to_png(p) for p in pixels]

    profiles, test_rows, ft_rows = [], [], []
    for index, (pid, name, job, city, name_key) in enumerate(FICTITIOUS):
        if name_key is None:
            biography = f"Born in {city}, this person works as a {job}."
        else:
            biography = json.dumps({name_key: name, "Born: ": city, "occupation ": job})
        tasks = _tasks(name, job, city, rng)
        profiles.append({"image": {"bytes": pngs[index], "path": f"{pid}.png"}, "ID": pid,
                         "Directory": f"profiles/{pid}", "biography": biography,
                         "question": "What is this person's occupation?", "answer": job, **tasks})
        variants = [{"bytes": to_png(transform_portrait(pixels[index], rng, k)), "path": f"{pid}_pose{k}_gen1.png"}
                    for k in range(3)]
        test_rows.append({"ID": pid, "biography": biography, "question": "", "answer": "", "images": variants,
                          **_tasks(name, job, city, rng)})
        carry_id = (pid if index != 1 else int(pid)) if index < 3 else None
        image = _reencoded(pngs[index]) if index == 4 else pngs[index]
        ft_rows.append({"image": {"bytes": image, "path": None}, "metadata": _metadata(pid, name, job, city, carry_id)})

    real_rows = []
    for offset, (pid, name, job, city) in enumerate(REAL):
        real_rows.append({"image": {"bytes": pngs[len(FICTITIOUS) + offset], "path": f"{pid}.png"}, "ID": pid,
                          "biography": {"Name: ": name, "Born: ": city}, "question": "", "answer": "",
                          **_tasks(name, job, city, rng)})

    profile_features = Features({"image": Image(), **profile_schema})
    full_features = Features({"image": Image(), "ID": Value("string"), "Directory": Value("string"),
                              **{k: v for k, v in profile_schema.items() if k != "ID"}})
    _write(root / "Full_Set", profiles, full_features)
    for percent, forget in FORGET.items():
        _write(root / f"forget_{percent}", [p for p in profiles if p["ID"] in forget], profile_features)
        _write(root / f"retain_{100 - percent}", [p for p in profiles if p["ID"] not in forget], profile_features)
    _write(root / "Test_Set", test_rows, Features({"images": List(Image()), **profile_schema}), shards=2)
    real_schema = {**profile_schema, "biography": {"Name: ": Value("string"), "Born: ": Value("string")}}
    _write(root / "Retain_Set", real_rows, Features({"image": Image(), **real_schema}))
    _write(root / "ft_Data", ft_rows, Features({"image": Image(), "metadata": Value("string")}))
    return root
