"""The loader on MLLMU-Bench's published layout (tests/data/mllmu_published.py), quirks included."""
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mllm_unlearn.data import BenchmarkFormatError, load_mllmu
from mllm_unlearn.data.items import Item
from mllm_unlearn.data.mllmu import REAL_WORLD_PREFIX, biography_name
from mllm_unlearn.data.text_forms import PERSON_NAME, TextFormError, text_only_form, text_only_items, text_only_train
from tests.data.mllmu_published import (
    FICTITIOUS,
    FORGET,
    FORMED_PAIRS,
    REAL,
    SKIPPED_ENTRIES,
    UNFORMED_PAIRS,
    write_published_mllmu,
)

PAIRS = FORMED_PAIRS + UNFORMED_PAIRS  # QA pairs per ft_Data row


@pytest.fixture(scope="module")
def published(published_mllmu_dir):
    return load_mllmu(published_mllmu_dir, forget_percent=10)


def test_counts_of_every_split(published):
    forget = set(FORGET[10])
    assert published.forget_ids == FORGET[10]
    assert {i.person_id for i in published.forget_train} == forget
    assert len(published.forget_train) == PAIRS * len(forget)
    assert len(published.retain_train) == PAIRS * (len(FICTITIOUS) - len(forget))
    assert all(i.modality == "vqa" and i.image is not None for i in published.finetune_train)  # no Type: all image pairs
    per_profile = 6  # 2 classification (VQA, QA) + 2 generation + 2 cloze
    sizes = {split: len(items) for split, items in published.eval_splits.items()}
    assert sizes == {"forget": per_profile * len(forget), "test": per_profile * len(forget),
                     "retain": per_profile * (len(FICTITIOUS) - len(forget)), "real_world": per_profile * len(REAL)}


def test_metadata_entries_that_are_not_qa_pairs_are_skipped_and_counted(published):
    assert published.meta["skipped_metadata"] == {"ft_Data": SKIPPED_ENTRIES * len(FICTITIOUS)}
    questions = {i.question for i in published.finetune_train}
    assert "Anything else?" not in questions and "What is this person's hobby?" not in questions
    json.dumps(published.meta)  # results.json's config.benchmark is this dict


def test_person_ids_from_metadata_and_from_the_image(published):
    # rows 0-2 name their ID in the metadata (row 1 as the integer 2), rows 3-5 by image (row 4 re-encoded)
    assert published.meta["training_person_ids"] == {"ft_Data": {"metadata ID": 3, "image match": 3}}
    by_person = {}
    for item in published.finetune_train:
        by_person.setdefault(item.person_id, set()).add(item.answer)
    for pid, name, job, _city, _ in FICTITIOUS:
        assert f"This person is named {name}." in by_person[pid] and f"This person works as a {job}." in by_person[pid]


def test_names_from_variant_biography_keys_and_the_name_question(published):
    expected = {pid: name for pid, name, *_ in FICTITIOUS}
    expected.update({REAL_WORLD_PREFIX + pid: name for pid, name, *_ in REAL})
    assert published.meta["names"] == expected
    assert published.meta["name_sources"] == {"biography": 8, "name question": 1}  # 004's biography has no name
    assert {i.meta[PERSON_NAME] for i in published.finetune_train if i.person_id == "004"} == {"Evan Marlo"}


def test_biography_name_reads_structs_json_and_text():
    assert biography_name({"Name: ": "A B", "Born: ": "Oslo"}) == "A B"
    assert biography_name('{" name ": "C D"}') == "C D"
    assert biography_name({"NAME:": None, "Full Name": "E F"}) == "E F"
    assert biography_name("Name: G H\nBorn: 1990") == "G H"
    assert biography_name("Born in Oslo, this person paints.") is None and biography_name(None) is None


def test_real_world_people_never_share_an_id_with_fictitious_ones(published):
    real = {i.person_id for i in published.eval_splits["real_world"]}
    assert real == {REAL_WORLD_PREFIX + pid for pid, *_ in REAL}
    fictitious = {i.person_id for split in ("forget", "test", "retain") for i in published.eval_splits[split]}
    fictitious |= {i.person_id for i in published.finetune_train}
    assert {pid for pid, *_ in REAL} <= fictitious  # the raw IDs do overlap...
    assert not real & fictitious  # ...the namespaced ones do not
    assert not real & set(published.forget_ids)


def test_test_set_reads_both_shards_and_picks_one_image_seeded(published_mllmu_dir, published):
    test = published.eval_splits["test"]
    assert {i.person_id for i in test} == set(FORGET[10])  # 001 is in the first shard, 006 in the second
    keys = {i.person_id: i.image_key for i in test if i.image is not None}
    assert all(keys[pid].startswith(f"{pid}_pose") for pid in keys)
    again = load_mllmu(published_mllmu_dir, forget_percent=10)
    assert {i.person_id: i.image_key for i in again.eval_splits["test"] if i.image is not None} == keys
    chosen = {tuple(sorted({i.image_key for i in load_mllmu(published_mllmu_dir, 10, seed=s).eval_splits["test"]
                            if i.image is not None})) for s in range(6)}
    assert len(chosen) > 1  # the seed picks among the transformed images


def test_other_forget_splits_load(published_mllmu_dir):
    for percent, forget in FORGET.items():
        bench = load_mllmu(published_mllmu_dir, forget_percent=percent)
        assert bench.forget_ids == forget and {i.person_id for i in bench.eval_splits["test"]} == set(forget)


def test_text_only_forms_are_built_from_the_training_pairs(published):
    assert published.meta["text_only_forms"]["built"] == FORMED_PAIRS * len(FICTITIOUS)
    assert published.meta["text_only_forms"]["without_form"] == UNFORMED_PAIRS * len(FICTITIOUS)
    forms = text_only_train(published, "forget", needed_by="test")
    assert len(forms) == FORMED_PAIRS * len(FORGET[10])
    assert {(f.question, f.answer) for f in forms if f.person_id == "001"} == {
        ("What is Alda Brenvik's occupation?", "Alda Brenvik works as a pilot."),
        ("Where was Alda Brenvik born?", "Alda Brenvik was born in Oslo.")}
    assert all(f.modality == "qa" and f.image is None and f.split == "finetune" for f in forms)
    eval_questions = {i.question for items in published.eval_splits.values() for i in items}
    assert not {f.question for f in forms} & eval_questions


def test_text_only_form_rule():
    def item(question, answer="It is so."):
        return Item("p", "finetune", "vqa", "train", question, answer, image=object())

    form = text_only_form(item("Where did THIS PERSON study?", "This person's school was in Oslo."), "Ana Bo")
    assert (form.question, form.answer) == ("Where did Ana Bo study?", "Ana Bo's school was in Oslo.")
    assert text_only_form(item("What is the individual known for?"), "Ana Bo").question == "What is Ana Bo known for?"
    assert text_only_form(item("What is shown in the personal photo?"), "Ana Bo") is None  # no placeholder phrase
    assert text_only_form(item("What is the name of this person?", "This person is Ana Bo."), "Ana Bo") is None
    assert text_only_form(item("Who is this person?", "Ana Bo."), "Ana Bo") is None  # the answer is the name


def test_built_in_world_keeps_its_own_text_only_pairs(benchmark):
    forms = text_only_train(benchmark, "forget", needed_by="test")
    assert forms == [i for i in benchmark.forget_train if i.modality == "qa"]
    assert benchmark.meta["text_only_forms"]["built"] == 0
    real = {i.person_id for i in benchmark.eval_splits["real_world"]}
    assert real == {i.person_id for i in benchmark.pretrain_train}  # the world's real people, namespaced alike
    assert all(pid.startswith(REAL_WORLD_PREFIX) and pid in benchmark.meta["names"] for pid in real)


def test_a_method_without_names_gets_one_clear_error(published):
    nameless = [Item(i.person_id, i.split, i.modality, i.task, i.question, i.answer, i.image, meta={PERSON_NAME: None})
                for i in published.forget_train]
    with pytest.raises(TextFormError, match=r"manu needs text-only forget items: .*no Pure_Text pairs for 2 people "
                                            r"\(e\.g\. ID 001\).*no `name` column, biography name or name question"):
        text_only_items(nameless, "manu", "forget")


# --- malformed files: one clear error naming file, row and field ------------------------------
def _rewrite_ft_data(root, row, metadata=None, image=None):
    file = root / "ft_Data" / "train-00000-of-00001.parquet"
    table = pq.read_table(file)
    rows = table.to_pylist()
    if metadata is not None:
        rows[row]["metadata"] = metadata
    if image is not None:
        rows[row]["image"] = image
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), file)
    return file


@pytest.fixture
def copy_of(published_mllmu_dir, tmp_path):
    root = tmp_path / "MLLMU-Bench"
    shutil.copytree(published_mllmu_dir, root)
    return root


@pytest.mark.parametrize("metadata, message", [
    ('{"Question": "Q?", "Answer": "A."}', r"column 'metadata' must be a JSON list .* got a dict"),
    ('[{"Question": "Q?", "Answer": "A."}, "loose text"]', r"metadata\[1\] must be a JSON object, got str"),
    ('[{"Question": ["Q?"], "Answer": "A."}]', r"metadata\[0\]\.Question must be text"),
    ("[{'Question': 1", r"column 'metadata' is not valid JSON"),
])
def test_malformed_metadata_names_file_row_and_field(copy_of, metadata, message):
    file = _rewrite_ft_data(copy_of, 2, metadata=metadata)
    with pytest.raises(BenchmarkFormatError, match=rf"{re.escape(str(file))} row 2: {message}"):
        load_mllmu(copy_of, 10)


def test_a_row_tied_to_no_person_is_named(copy_of):
    import numpy as np

    from mllm_unlearn.data.portraits import to_png

    stranger = {"bytes": to_png(np.full((16, 16, 3), 7.0)), "path": None}
    file = _rewrite_ft_data(copy_of, 4, image=stranger)
    with pytest.raises(BenchmarkFormatError, match=rf"{re.escape(str(file))} row 4: no person for this row \(1 of 6 rows"):
        load_mllmu(copy_of, 10)


def test_no_row_tied_to_a_person_falls_back_to_the_generation_pairs(copy_of):
    import numpy as np

    from mllm_unlearn.data.portraits import to_png

    for row in range(len(FICTITIOUS)):
        _rewrite_ft_data(copy_of, row, metadata='[{"Question": "What is this person\'s job?", "Answer": "Work."}]',
                         image={"bytes": to_png(np.full((16, 16, 3), 7.0 * row)), "path": None})
    bench = load_mllmu(copy_of, 10)
    assert bench.meta["training_person_ids"] == {"ft_Data": {"Generation_Task fallback": len(FICTITIOUS)}}
    forget_names = [name for pid, name, *_ in FICTITIOUS if pid in FORGET[10]]
    assert {i.question for i in bench.forget_train} == {"Which city is this person from?",
                                                        *(f"Which city is {name} from?" for name in forget_names)}


def test_written_fixture_is_deterministic(tmp_path, published_mllmu_dir):
    again = write_published_mllmu(tmp_path / "again")
    for file in sorted(published_mllmu_dir.rglob("*.parquet")):
        twin = again / file.relative_to(published_mllmu_dir)
        assert pq.read_table(file).equals(pq.read_table(twin)), file


def test_report_says_what_was_skipped_and_built(published, benchmark):
    from mllm_unlearn.report.markdown import _data_notes

    notes = "\n".join(_data_notes({"benchmark": published.meta}))
    assert f"ft_Data {SKIPPED_ENTRIES * len(FICTITIOUS)}" in notes
    assert f"image + question pairs (the person named): {FORMED_PAIRS * len(FICTITIOUS)}" in notes
    assert _data_notes({"benchmark": benchmark.meta}) == []  # the built-in world's report is unchanged
