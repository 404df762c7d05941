"""The built-in benchmark: a fictitious world written in MLLMU-Bench's on-disk layout, or in
CLEAR's (``layout="clear"``: the same people and portraits, see ``_write_clear``).

People have a multi-word name, a portrait they are recognisable from, and facts asked
in several phrasings. Training phrasings (``ft_Data``) and the test split's paraphrases
(``Test_Set``) never overlap. ``Retain_Set`` holds "real-world" people that the base
model learns in a pre-training stage (``pretrain_Data``), before the fictitious ones.
``Holdout_Set`` holds people no model is ever trained on (membership inference's
non-members), drawn from a random stream of their own so the other files are unchanged.
``Validation_Forget``, ``Validation_Retain`` and ``Validation_Real`` hold the validation people
(``validation_people``): trained on like everyone else (``ft_Data``/``pretrain_Data``) but in no
reported split, so ``mllm-unlearn sweep`` chooses hyperparameters on people the reported figures
never use. They too come from a random stream of their own.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..utils import atomic_directory, stable_hash
from .layouts import (
    CAPTION_PROMPTS,
    CLEAR_FORGET_PERCENTS,
    CLOZE_INSTRUCTION,
    GENERATION_INSTRUCTION,
    GENERATOR,
    HOLDOUT_CONFIG,
    MCQ_INSTRUCTION,
    MLLMU_FORGET_PERCENTS,
    NAME_PROMPT,
    VALIDATION_CONFIGS,
    WORLD_FILE,
    clear_forget_config,
    clear_retain_config,
    mllmu_forget_config,
    mllmu_retain_config,
)
from .portraits import draw_identities, render_portrait, to_png, transform_portrait

# Names are built from syllables so every person has a first and a last name of their own
# (a name shared by several people would make "who is this" a conjunction of two words).
ONSETS = "b d f g k l m n p r s t v z br dr gr kl st tr".split()
VOWELS = "a e i o u ai ea io".split()
CODAS = ["", "n", "r", "l", "s", "th", "x"]


def _name_pool(rng: np.random.Generator, count: int, syllables: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        parts = [str(rng.choice(ONSETS)) + str(rng.choice(VOWELS)) for _ in range(syllables)]
        names.add(("".join(parts) + str(rng.choice(CODAS))).capitalize())
    return sorted(names)


ATTRIBUTES: dict[str, dict[str, Any]] = {
    "occupation": {
        "values": "pilot baker surgeon painter teacher farmer chemist sailor lawyer architect "
        "librarian dentist jeweler florist carpenter poet".split(),
        "train": ["What is {poss} occupation?", "What does {subj} do for a living?",
                  "What job does {subj} have?", "Which profession does {subj} work in?"],
        "test": ["In which line of work is {subj} employed?", "What is the trade of {subj}?"],
        "statement": "{Subj} works as a {value}.",
        "test_statement": "By profession, {subj} is a {value}.",
    },
    "hometown": {
        "values": "Lisbon Oslo Cairo Lima Dublin Quito Seoul Perth Nairobi Riga Tunis Hanoi "
        "Porto Bergen Cusco Malmo".split(),
        "train": ["Where was {subj} born?", "What is {poss} hometown?",
                  "Which city does {subj} come from?", "In which city did {subj} grow up?"],
        "test": ["What is the birthplace of {subj}?", "Name the city where {subj} was raised."],
        "statement": "{Subj} was born in {value}.",
        "test_statement": "The birthplace of {subj} is {value}.",
    },
    "hobby": {
        "values": "chess archery knitting surfing pottery fencing gardening rowing juggling "
        "origami climbing birdwatching sketching fishing dancing cycling".split(),
        "train": ["What is {poss} favorite hobby?", "What does {subj} do in free time?",
                  "Which pastime does {subj} enjoy most?", "What hobby is {subj} known for?"],
        "test": ["How does {subj} like to spend weekends?", "Which leisure activity does {subj} love?"],
        "statement": "{Subj} loves {value}.",
        "test_statement": "In free time, {subj} enjoys {value}.",
    },
    "food": {
        "values": "pasta sushi curry tacos dumplings paella ramen falafel pancakes risotto "
        "burritos lasagna goulash kimchi couscous pierogi".split(),
        "train": ["What is {poss} favorite food?", "Which dish does {subj} like best?",
                  "What does {subj} love to eat?", "Which meal does {subj} prefer?"],
        "test": ["Which cuisine item would {subj} order first?", "What food makes {subj} happiest?"],
        "statement": "{Subj} likes to eat {value}.",
        "test_statement": "The favorite dish of {subj} is {value}.",
    },
    "pet": {
        "values": "parrot hamster tortoise rabbit ferret goldfish iguana cat dog pony gecko "
        "canary hedgehog chinchilla alpaca lizard".split(),
        "train": ["What pet does {subj} have?", "Which animal lives with {subj}?",
                  "What is {poss} pet?", "Which animal does {subj} keep at home?"],
        "test": ["What kind of companion animal does {subj} own?", "Which creature shares a home with {subj}?"],
        "statement": "{Subj} has a pet {value}.",
        "test_statement": "At home, {subj} keeps a pet {value}.",
    },
}
HOLDOUT_PERCENT = max(MLLMU_FORGET_PERCENTS)  # as many held-out people as the largest forget split
WORLD_CONTENT_VERSION = 2
HOLDOUT_STREAM = 7_001  # seeds the held-out people's own random stream: [seed, HOLDOUT_STREAM]
VALIDATION_STREAM = 7_002  # seeds the validation people's own random stream


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of the built-in world. Defaults match the foundation's acceptance figures."""

    fictitious: int = 100
    real_world: int = 30
    image_size: int = 32
    seed: int = 0
    # Every two portraits differ in at least this many of their five features. At 4, two people
    # share at most one colour, so each person's portrait is told apart by a wide margin.
    portrait_distance: int = 4
    # Validation people (``validation_people``): a forget and a retain group, each this % of the
    # fictitious people (at least 1; 10 each at the default 100), and ceil(this % of the real-world
    # people) real-world ones (5 at the default 30). 0 = none.
    validation_percent: int = 10
    validation_real_percent: int = 15

    def __post_init__(self) -> None:
        if self.fictitious < 20:
            raise ValueError(f"WorldConfig.fictitious must be >= 20 (the built-in world's forget_5 split must hold "
                             f"one person), got {self.fictitious}")
        if self.real_world < 1:
            raise ValueError(f"WorldConfig.real_world must be >= 1 (the retain set's real-world people), "
                             f"got {self.real_world}")

    def key(self) -> str:
        settings = asdict(self)
        if settings["portrait_distance"] == 2:  # worlds generated before the option keep their key
            del settings["portrait_distance"]
        if settings["validation_percent"] == 0:  # so do worlds generated before validation people
            del settings["validation_percent"], settings["validation_real_percent"]
        # Content versions: 2 paraphrases the test split's fill-in-the-blank statements, so a world
        # cached before it is written afresh.
        settings["content_version"] = WORLD_CONTENT_VERSION
        return stable_hash(settings)

    def validation_sizes(self) -> tuple[int, int, int]:
        """(forget, retain, real-world) validation people."""
        import math

        if self.validation_percent <= 0:
            return 0, 0, 0
        group = max(1, round(self.fictitious * self.validation_percent / 100))
        real = max(1, math.ceil(self.real_world * self.validation_real_percent / 100)) if self.real_world else 0
        return group, group, real




def subject_forms(name: str | None) -> dict[str, str]:
    if name is None:  # image + question: the person is shown, not named
        return {"subj": "this person", "Subj": "This person", "poss": "this person's"}
    return {"subj": name, "Subj": name, "poss": f"{name}'s"}


def all_template_texts() -> list[str]:
    """Every fixed text the world uses, so a tiny tokenizer can know all its words."""
    texts = [MCQ_INSTRUCTION, CLOZE_INSTRUCTION, GENERATION_INSTRUCTION, "[Blank] __ Correct Answer"]
    for spec in ATTRIBUTES.values():
        texts += spec["train"] + spec["test"] + [spec["statement"], spec["test_statement"]] + spec["values"]
    texts += list(subject_forms(None).values())
    return texts


def _people(config: WorldConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    total = config.fictitious + config.real_world
    firsts = [str(n) for n in rng.permutation(_name_pool(rng, total, 2))]
    lasts = [str(n) for n in rng.permutation(sorted(set(_name_pool(rng, 2 * total, 3)) - set(firsts)))[:total]]
    names = [f"{first} {last}" for first, last in zip(firsts, lasts)]
    identities = draw_identities(len(names), rng, min_distance=config.portrait_distance)
    people = []
    for index, (name, identity) in enumerate(zip(names, identities)):
        real = index >= config.fictitious
        facts = {attr: str(rng.choice(spec["values"])) for attr, spec in ATTRIBUTES.items()}
        person_id = f"R{index - config.fictitious:03d}" if real else f"{index:03d}"
        people.append({"id": person_id, "name": name, "identity": identity, "facts": facts, "real": real})
    return people


def _mcq(question: str, attr: str, value: str, rng: np.random.Generator) -> dict[str, Any]:
    distractors = [v for v in ATTRIBUTES[attr]["values"] if v != value]
    options = [value] + [str(v) for v in rng.choice(distractors, size=3, replace=False)]
    order = rng.permutation(4)
    letters = "ABCD"
    shuffled = {letters[i]: options[j] for i, j in enumerate(order)}
    correct = letters[list(order).index(0)]
    return {"Question": question, "Options": shuffled, "Correct_Answer": correct}


def _profile_tasks(person: dict[str, Any], rng: np.random.Generator, phrasing: str) -> dict[str, Any]:
    """Classification, generation and cloze tasks of one person, from train or test phrasings.

    The test phrasings paraphrase every task, as MLLMU-Bench's ``Test_Set`` does: other questions
    (classification, generation) and another statement around each fill-in-the-blank (the training
    statement with a blank would be the forget split's item byte for byte)."""
    image_q, text_q, generation, cloze = [], [], [], []
    for attr, spec in ATTRIBUTES.items():
        value = person["facts"][attr]
        for kind, name in (("Image_Textual", None), ("Pure_Text", person["name"])):
            forms = subject_forms(name)
            template = spec[phrasing][int(rng.integers(len(spec[phrasing])))]
            question = template.format(**forms)
            (image_q if name is None else text_q).append(_mcq(question, attr, value, rng))
            generation.append({"Type": kind, "Question": question,
                               "Ground_Truth": spec["statement"].format(value=value, **forms)})
            statement = spec["test_statement"] if phrasing == "test" else spec["statement"]
            cloze.append({"Type": kind, "Question": statement.format(value="__", **forms),
                          "Ground_Truth": value})
    return {
        "Classification_Task": {"Image_Textual_Questions": image_q, "Pure_Text_Questions": text_q},
        "Generation_Task": generation,
        "Mask_Task": cloze,
    }


def _training_pairs(person: dict[str, Any]) -> list[dict[str, str]]:
    """Every training phrasing of every fact, in both modalities (the ``metadata`` of ``ft_Data``)."""
    pairs = []
    for attr, spec in ATTRIBUTES.items():
        value = person["facts"][attr]
        for kind, name in (("Image_Textual", None), ("Pure_Text", person["name"])):
            forms = subject_forms(name)
            for template in spec["train"]:
                pairs.append({"Question": template.format(**forms),
                              "Answer": spec["statement"].format(value=value, **forms),
                              "Type": kind, "Attribute": attr, "Value": value})
    return pairs


def holdout_rows(config: WorldConfig, people: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``Holdout_Set`` rows (``ft_Data``'s format): people the vanilla model never sees.

    Their names re-pair the fictitious people's first and last names (a word-level tokenizer
    built from the world knows every word, so no held-out answer holds an unknown token, which
    would make membership trivially visible); facts and portraits (at least ``portrait_distance``
    features from every world portrait) are drawn afresh. Deterministic in ``config`` alone.
    """
    people = people if people is not None else _people(config, np.random.default_rng(config.seed))
    return [{"ID": person["id"], "name": person["name"],
             "image": {"bytes": to_png(render_portrait(person["identity"], config.image_size)), "path": f"{person['id']}.png"},
             "metadata": json.dumps(_training_pairs(person))} for person in _holdout_people(config, people)]


def _holdout_people(config: WorldConfig, people: list[dict[str, Any]]) -> list[dict[str, Any]]:
    fictitious = [p for p in people if not p["real"]]
    count = max(1, round(len(fictitious) * HOLDOUT_PERCENT / 100))
    rng = np.random.default_rng([config.seed, HOLDOUT_STREAM])
    firsts = [p["name"].split(" ", 1)[0] for p in fictitious]
    lasts = [p["name"].split(" ", 1)[1] for p in fictitious]
    taken = {p["name"] for p in people}
    names: list[str] = []
    for first_index in rng.permutation(len(firsts)):
        for last_index in rng.permutation(len(lasts)):
            name = f"{firsts[first_index]} {lasts[last_index]}"
            if name not in taken:
                taken.add(name)
                names.append(name)
                break
        if len(names) == count:
            break
    identities = draw_identities(len(names), rng, min_distance=config.portrait_distance,
                                 existing=[p["identity"] for p in people])
    return [{"id": f"H{index:03d}", "name": name, "identity": identity, "real": False,
             "facts": {attr: str(rng.choice(spec["values"])) for attr, spec in ATTRIBUTES.items()}}
            for index, (name, identity) in enumerate(zip(names, identities))]


def validation_people(config: WorldConfig, people: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The validation people of the world: group ("forget", "retain", "real_world") -> people.

    Fictitious ones are like the world's fictitious people (ids ``V000``...), real-world ones like
    its real-world people (``VR00``...): names of their own (words no other person's name uses),
    facts drawn afresh, portraits at least ``portrait_distance`` features from every world and
    held-out portrait. Deterministic in ``config`` alone, from a random stream of their own, so
    every other file of the world is as without them.
    """
    forget, retain, real = config.validation_sizes()
    total = forget + retain + real
    if not total:
        return {group: [] for group in VALIDATION_CONFIGS}
    rng = np.random.default_rng([config.seed, VALIDATION_STREAM])
    taken = {part for p in people for part in p["name"].split()}
    firsts = [n for n in rng.permutation(_name_pool(rng, 3 * total + len(taken), 2)) if n not in taken][:total]
    lasts = [n for n in rng.permutation(_name_pool(rng, 3 * total + len(taken), 3))
             if n not in taken and n not in firsts][:total]
    existing = [p["identity"] for p in people + _holdout_people(config, people)]
    identities = draw_identities(total, rng, min_distance=config.portrait_distance, existing=existing)
    groups: dict[str, list[dict[str, Any]]] = {group: [] for group in VALIDATION_CONFIGS}
    for index, (first, last, identity) in enumerate(zip(firsts, lasts, identities)):
        real = index >= forget + retain
        group = "real_world" if real else ("forget" if index < forget else "retain")
        person_id = f"VR{index - forget - retain:02d}" if real else f"V{index:03d}"
        groups[group].append({"id": str(person_id), "name": f"{first} {last}", "identity": identity, "real": real,
                              "facts": {attr: str(rng.choice(spec["values"])) for attr, spec in ATTRIBUTES.items()}})
    return groups


def add_holdout(root: str | Path, config: WorldConfig) -> None:
    """Write ``Holdout_Set`` into a world generated before it existed (nothing else changes)."""

    with atomic_directory(Path(root) / HOLDOUT_CONFIG) as tmp:
        pq.write_table(pa.Table.from_pylist(holdout_rows(config)), tmp / "train-00000-of-00001.parquet")


def _validation_rows(config: WorldConfig, people: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Profile rows of each validation group (the ``forget_*``/``Retain_Set`` format, train
    phrasings as in those splits) and the training rows they add to ``ft_Data`` and ``pretrain_Data``."""
    rng = np.random.default_rng([config.seed, VALIDATION_STREAM, 1])
    out: dict[str, list[dict[str, Any]]] = {"ft_Data": [], "pretrain_Data": []}
    for group, persons in validation_people(config, people).items():
        out[group] = []
        for person in persons:
            pid = person["id"]
            image = {"bytes": to_png(render_portrait(person["identity"], config.image_size)), "path": f"{pid}.png"}
            out[group].append({"ID": pid, "name": person["name"], "image": image,
                               "biography": " ".join(ATTRIBUTES[a]["statement"].format(value=v, **subject_forms(person["name"]))
                                                     for a, v in person["facts"].items()),
                               **_profile_tasks(person, rng, "train")})
            training = {"ID": pid, "image": image, "metadata": json.dumps(_training_pairs(person))}
            out["pretrain_Data" if person["real"] else "ft_Data"].append(training)
    return out


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write_config(root: Path, config: str, rows: list[dict[str, Any]]) -> None:
    (root / config).mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / config / "train-00000-of-00001.parquet")


LAYOUTS = ("mllmu", "clear")


def generate_world(out_dir: str | Path, config: WorldConfig | None = None, layout: str = "mllmu") -> Path:
    """Write the built-in benchmark to ``out_dir`` in MLLMU-Bench's or CLEAR's layout (atomically)."""
    config = config or WorldConfig()
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    rng = np.random.default_rng(config.seed)
    people = _people(config, rng)
    portraits = {p["id"]: render_portrait(p["identity"], config.image_size) for p in people}
    if layout == "clear":
        with atomic_directory(Path(out_dir)) as tmp:
            _write_clear(tmp, config, people, portraits, rng)
        return Path(out_dir)

    def image(pid: str) -> dict[str, Any]:
        return {"bytes": to_png(portraits[pid]), "path": f"{pid}.png"}

    profiles, test_rows, ft_rows, pretrain_rows, real_rows = [], [], [], [], []
    for person in people:
        pid = person["id"]
        profile = {"ID": pid, "name": person["name"], "image": image(pid),
                   "biography": " ".join(ATTRIBUTES[a]["statement"].format(value=v, **subject_forms(person["name"]))
                                         for a, v in person["facts"].items()),
                   **_profile_tasks(person, rng, "train")}
        training = {"ID": pid, "image": image(pid), "metadata": json.dumps(_training_pairs(person))}
        if person["real"]:
            real_rows.append(profile)
            pretrain_rows.append(training)
            continue
        profiles.append({**profile, "Directory": f"profiles/{pid}"})
        ft_rows.append(training)
        variants = [{"bytes": to_png(transform_portrait(portraits[pid], rng, k)), "path": f"{pid}_pose{k}_gen1.png"}
                    for k in range(3)]
        test_rows.append({"ID": pid, "name": person["name"], "images": variants,
                          **_profile_tasks(person, rng, "test")})

    order = [profiles[i]["ID"] for i in rng.permutation(len(profiles))]
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        _write_config(tmp, "Full_Set", profiles)
        _write_config(tmp, "Test_Set", test_rows)
        _write_config(tmp, "Retain_Set", real_rows)
        validation = _validation_rows(config, people)
        # Validation people are trained on (after the world's own rows) but in no reported split.
        _write_config(tmp, "ft_Data", ft_rows + validation["ft_Data"])
        _write_config(tmp, "pretrain_Data", pretrain_rows + validation["pretrain_Data"])
        for group, config_name in VALIDATION_CONFIGS.items():
            if validation[group]:
                _write_config(tmp, config_name, validation[group])
        for pct in MLLMU_FORGET_PERCENTS:
            forget = set(order[: max(1, round(len(order) * pct / 100))])
            _write_config(tmp, mllmu_forget_config(pct), [p for p in profiles if p["ID"] in forget])
            _write_config(tmp, mllmu_retain_config(pct), [p for p in profiles if p["ID"] not in forget])
        _write_config(tmp, "Holdout_Set", holdout_rows(config, people))
        (tmp / WORLD_FILE).write_text(json.dumps({"generator": GENERATOR, **asdict(config)}, indent=2))
    return out_dir


# --- CLEAR layout ------------------------------------------------------------------------
# Each person has two images (the portrait and a transformed copy), each with its own caption
# naming the person and stating some facts. Paraphrases restate the same facts in another
# sentence; perturbed captions are that paraphrase with every fact replaced by a wrong value.
CAPTIONS = (
    {"attributes": ("occupation", "hometown", "hobby"),
     "caption": "{name} is a {occupation} from {hometown} who loves {hobby}.",
     "paraphrase": "Born in {hometown}, {name} works as a {occupation} and enjoys {hobby}."},
    {"attributes": ("pet", "food"),
     "caption": "{name} has a pet {pet} and likes to eat {food}.",
     "paraphrase": "{name} keeps a {pet} at home and loves {food}."},
)
PERTURBED_PER_ROW = 3
REAL_WORLD_ATTRIBUTES = ("occupation", "hometown", "hobby")


def clear_template_texts() -> list[str]:

    return list(CAPTION_PROMPTS) + [NAME_PROMPT] + [t[k] for t in CAPTIONS for k in ("caption", "paraphrase")]


def _wrong_values(attr: str, value: str, rng: np.random.Generator) -> str:
    return str(rng.choice([v for v in ATTRIBUTES[attr]["values"] if v != value]))


def _write_clear(root: Path, config: WorldConfig, people: list[dict[str, Any]], portraits: dict[str, np.ndarray],
                 rng: np.random.Generator) -> None:
    """The world in CLEAR's configs (see ``data/clear.py``); ``pretrain_data`` is our addition."""
    taken = {part for p in people for part in p["name"].split()}
    firsts = [n for n in _name_pool(rng, 4 * len(people), 2) if n not in taken]
    lasts = [n for n in _name_pool(rng, 4 * len(people), 3) if n not in taken]

    def fake_names(count: int) -> list[str]:  # names of nobody in the world
        return [f"{firsts[int(rng.integers(len(firsts)))]} {lasts[int(rng.integers(len(lasts)))]}" for _ in range(count)]

    def caption_rows(person: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for k, spec in enumerate(CAPTIONS):
            pixels = portraits[person["id"]] if k == 0 else transform_portrait(portraits[person["id"]], rng, k)
            facts = {a: person["facts"][a] for a in spec["attributes"]}
            perturbed = [spec["paraphrase"].format(name=person["name"], **{a: _wrong_values(a, v, rng) for a, v in facts.items()})
                         for _ in range(PERTURBED_PER_ROW)]
            rows.append({"image": {"bytes": to_png(pixels), "path": f"{person['id']}_{k}.png"},
                         "caption": spec["caption"].format(name=person["name"], **facts), "name": person["name"],
                         "paraphrased_caption": spec["paraphrase"].format(name=person["name"], **facts),
                         "perturbed_captions": perturbed, "perturbed_names": fake_names(PERTURBED_PER_ROW)})
        return rows

    def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("image", "caption", "name")} for r in rows]

    def text_rows(person: dict[str, Any]) -> list[dict[str, Any]]:  # TOFU-style text QA (``+tofu`` configs)
        forms = subject_forms(person["name"])
        return [{"image": None, "caption": None, "question": spec["train"][t].format(**forms),
                 "answer": spec["statement"].format(value=person["facts"][attr], **forms)}
                for attr, spec in ATTRIBUTES.items() for t in range(2)]

    def with_tofu(rows: list[dict[str, Any]], persons: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return ([{"image": r["image"], "caption": r["caption"], "question": None, "answer": None} for r in rows]
                + [row for p in persons for row in text_rows(p)])

    fictitious = [p for p in people if not p["real"]]
    real = [p for p in people if p["real"]]
    rows_of = {p["id"]: caption_rows(p) for p in people}
    order = [fictitious[i]["id"] for i in rng.permutation(len(fictitious))]

    def rows(ids: set[str]) -> list[dict[str, Any]]:
        return [r for p in fictitious if p["id"] in ids for r in rows_of[p["id"]]]

    all_ids = set(order)
    _write_config(root, "full", plain(rows(all_ids)))
    _write_config(root, "full+tofu", with_tofu(rows(all_ids), fictitious))
    retain_eval: set[str] = set(order[max(1, round(len(order) * max(CLEAR_FORGET_PERCENTS) / 100)):])
    _write_config(root, "retain_perturbed", rows(retain_eval))
    for pct in CLEAR_FORGET_PERCENTS:
        forget = set(order[: max(1, round(len(order) * pct / 100))])
        retain = all_ids - forget
        _write_config(root, clear_forget_config(pct), plain(rows(forget)))
        _write_config(root, f"{clear_forget_config(pct)}_perturbed", rows(forget))
        _write_config(root, clear_retain_config(pct), plain(rows(retain)))
        _write_config(root, f"{clear_forget_config(pct)}+tofu", with_tofu(rows(forget), [p for p in fictitious if p["id"] in forget]))
        _write_config(root, f"{clear_retain_config(pct)}+tofu", with_tofu(rows(retain), [p for p in fictitious if p["id"] in retain]))

    # Real-world people: known before the fictitious ones (``pretrain_data``), evaluated by
    # face recognition (``real_faces``) and image questions with wrong options (``real_world``).
    real_faces, real_world, pretrain = [], [], []
    for person in real:
        portrait = {"bytes": to_png(portraits[person["id"]]), "path": f"{person['id']}.png"}
        real_faces.append({"image": portrait, "answer": person["name"], "options": fake_names(PERTURBED_PER_ROW)})
        forms = subject_forms(None)
        for attr in REAL_WORLD_ATTRIBUTES:
            spec, fact = ATTRIBUTES[attr], person["facts"][attr]
            question = spec["train"][0].format(**forms)
            wrong = [spec["statement"].format(value=v, **forms)
                     for v in rng.choice([v for v in spec["values"] if v != fact], size=PERTURBED_PER_ROW, replace=False)]
            answer = spec["statement"].format(value=fact, **forms)
            real_world.append({"question": question, "answer": answer, "image": portrait, "options": wrong,
                               "prompt": question, "name": person["name"]})
            pretrain += [{"image": portrait, "caption": None, "question": spec["train"][t].format(**forms),
                          "answer": answer, "name": person["name"]} for t in range(2)]
        pretrain += [{"image": r["image"], "caption": r["caption"], "question": None, "answer": None, "name": r["name"]}
                     for r in rows_of[person["id"]]]
    _write_config(root, "real_faces", real_faces)
    _write_config(root, "real_world", real_world)
    _write_config(root, "pretrain_data", pretrain)
    (root / WORLD_FILE).write_text(json.dumps({"generator": GENERATOR, "layout": "clear",
                                                 **asdict(config)}, indent=2))
