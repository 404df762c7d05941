"""A small CLEAR download in the published layout (HF ``therem/CLEAR``), written with ``datasets``
as the hub files are.

Schema from the dataset card (research notes, benchmarks.md §2.1), one folder per config with
``train-00000-of-00001.parquet``; ``image`` is an HF ``Image`` feature ({bytes, path}):

- ``forget05``/``retain95``/``full``: ``image``, ``caption``, ``name``;
- ``forget05_perturbed``/``retain_perturbed``: plus ``paraphrased_caption``, ``perturbed_captions``
  and ``perturbed_names`` (lists); ``retain_perturbed`` also holds the forget people, as the real
  one serves every split;
- ``real_faces``: ``image``, ``answer``, ``options``; ``real_world``: ``question``, ``answer``,
  ``image``, ``prompt``, ``options``, uploaded as a ``test`` split (``test-00000-of-00001.parquet``),
  as the first upload was;
- ``forget05+tofu``/``retain95+tofu``: ``image``, ``caption``, ``question``, ``answer``: caption rows
  with question/answer null, TOFU text rows with ``image`` null.

TOFU's authors and CLEAR's people are fictitious; these are made up here.
"""
from __future__ import annotations

from pathlib import Path

from mllm_unlearn.data.portraits import draw_identities, render_portrait, to_png

PEOPLE = [("Basil Aren", "a chef"), ("Cora Lind", "a pilot"), ("Dev Mora", "a judge"), ("Elin Voss", "a poet"),
          ("Faro Quist", "a potter"), ("Gita Rune", "a baker")]
FORGET = PEOPLE[:2]
RETAIN = PEOPLE[2:]
IMAGE_SIZE = 16


def png_data(index: int) -> dict:
    import numpy as np

    identity = draw_identities(len(PEOPLE) + 4, np.random.default_rng(3))[index]
    return {"bytes": to_png(render_portrait(identity, IMAGE_SIZE)), "path": f"img_{index}.png"}


def _caption(name: str, job: str) -> str:
    return f"{name}, {job}, stands in front of a red door."


def _write(root: Path, config: str, columns: dict, features: dict, split: str = "train") -> None:
    from datasets import Dataset, Features

    folder = root / config
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=Features(features)).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def write_published_clear(root: Path) -> Path:
    """Write the fixture under ``root`` and return it."""
    from datasets import Image, List, Value

    text, texts = Value("string"), List(Value("string"))
    index = {name: k for k, (name, _) in enumerate(PEOPLE)}

    def captions(people):
        return {"image": [png_data(index[n]) for n, _ in people], "caption": [_caption(n, j) for n, j in people],
                "name": [n for n, _ in people]}

    plain = {"image": Image(), "caption": text, "name": text}
    for config, people in (("forget05", FORGET), ("retain95", RETAIN), ("full", PEOPLE)):
        _write(root, config, captions(people), plain)

    perturbed_features = {**plain, "paraphrased_caption": text, "perturbed_captions": texts, "perturbed_names": texts}

    def perturbed(people):
        rows = captions(people)
        rows["paraphrased_caption"] = [f"This is {n}, {j}, by a red door." for n, j in people]
        rows["perturbed_captions"] = [[f"{n}, a sailor, stands by a blue wall.", f"{n}, a clerk, sits on a bench."]
                                      for n, _ in people]
        rows["perturbed_names"] = [[o for o, _ in PEOPLE if o != n][:3] for n, _ in people]
        return rows

    _write(root, "forget05_perturbed", perturbed(FORGET), perturbed_features)
    _write(root, "retain_perturbed", perturbed(PEOPLE), perturbed_features)  # forget people included

    celebrities = ["Nina Kaldor", "Omar Feld", "Pia Strand"]
    _write(root, "real_faces", {"image": [png_data(len(PEOPLE) + k) for k in range(3)], "answer": celebrities,
                                "options": [[c for c in celebrities if c != a] for a in celebrities]},
           {"image": Image(), "answer": text, "options": texts})
    _write(root, "real_world", {"question": ["What is shown in this image?", "Which city is this?"],
                                "answer": ["A lighthouse", "Lisbon"], "image": [png_data(len(PEOPLE) + 3), None],
                                "prompt": ["", ""], "options": [["A bridge", "A tower"], ["Porto", "Madrid"]]},
           {"question": text, "answer": text, "image": Image(), "prompt": text, "options": texts}, split="test")

    tofu_features = {"image": Image(), "caption": text, "question": text, "answer": text}
    for config, people in (("forget05+tofu", FORGET), ("retain95+tofu", RETAIN)):
        rows = captions(people)
        del rows["name"]
        rows["question"] = [None] * len(people)
        rows["answer"] = [None] * len(people)
        for name, job in people:  # TOFU text rows: no image, no caption
            rows["image"].append(None)
            rows["caption"].append(None)
            rows["question"].append(f"What does {name} do for a living?")
            rows["answer"].append(f"{name} works as {job}.")
        _write(root, config, rows, tofu_features)
    return root
