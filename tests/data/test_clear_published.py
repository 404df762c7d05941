"""The CLEAR loader on a download in the published layout, written with ``datasets``."""
from __future__ import annotations

import pytest

from mllm_unlearn.data.clear import NAME_PROMPT, load_clear
from mllm_unlearn.data.mllmu import BenchmarkFormatError

from .clear_published import FORGET, PEOPLE, RETAIN, write_published_clear


@pytest.fixture(scope="module")
def published_clear_dir(tmp_path_factory):
    return write_published_clear(tmp_path_factory.mktemp("published") / "CLEAR")


def _key(item):
    return (item.image_key, item.question, item.answer)


@pytest.mark.parametrize("tofu", [False, True])
def test_published_clear_loads_with_captions_only_for_training(published_clear_dir, tofu):
    bench = load_clear(published_clear_dir, forget_percent=5, tofu=tofu)
    assert bench.forget_ids == sorted(n for n, _ in FORGET)
    splits = bench.eval_splits
    assert len(splits["forget"]) == len(splits["forget_facerec"]) == len(FORGET)
    # retain_perturbed serves every split: the forget people in it are not scored as retained
    assert len(splits["retain"]) == len(RETAIN) and bench.meta["retain_perturbed_rows_dropped"] == len(FORGET)
    assert len(splits["real_faces"]) == 3
    assert [i.modality for i in splits["real_world"]] == ["vqa", "qa"]  # the `test` split's file, one row without image
    facerec = {_key(i) for s in ("forget_facerec", "retain_facerec", "real_faces", "real_world") for i in splits[s]}
    for items in (bench.forget_train, bench.retain_train, bench.finetune_train):
        assert items and not any(i.question == NAME_PROMPT for i in items)  # CLEAR trains on captions only
        assert not {_key(i) for i in items} & facerec
    if tofu:  # TOFU's text rows: text-only items of the right people
        text = [i for i in bench.forget_train if i.modality == "qa"]
        assert len(text) == len(FORGET) and all(i.image is None for i in text)
    else:
        assert {i.person_id for i in bench.retain_train} == {n for n, _ in RETAIN}
        assert all(i.modality == "vqa" and i.answer.startswith(i.person_id) for i in bench.finetune_train)
    assert {i.person_id for i in bench.finetune_train if not i.person_id.startswith("tofu:")} <= {n for n, _ in PEOPLE}


def test_a_missing_published_column_is_named(published_clear_dir, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    broken = tmp_path / "CLEAR"
    shutil.copytree(published_clear_dir, broken)
    file = broken / "forget05_perturbed" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(file).drop(["perturbed_names"]), file)
    with pytest.raises(BenchmarkFormatError, match=r"forget05_perturbed.*perturbed_names"):
        load_clear(broken, forget_percent=5)
