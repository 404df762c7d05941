import json

import pyarrow.parquet as pq
import pytest

from mllm_unlearn.data import BenchmarkFormatError, WorldConfig, generate_world, load_mllmu
from mllm_unlearn.data.synthetic import ATTRIBUTES

CONFIGS = ["Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85", "Test_Set",
           "Retain_Set", "ft_Data"]


def test_layout_and_columns_follow_mllmu_bench(world_dir):
    for config in CONFIGS:
        files = list((world_dir / config).glob("*.parquet"))
        assert files, config
    full = pq.read_table(next((world_dir / "Full_Set").glob("*.parquet"))).to_pylist()
    row = full[0]
    for column in ("ID", "image", "biography", "Classification_Task", "Generation_Task", "Mask_Task"):
        assert column in row
    question = row["Classification_Task"]["Image_Textual_Questions"][0]
    assert set(question["Options"]) == {"A", "B", "C", "D"}
    assert question["Correct_Answer"] in "ABCD"
    assert row["image"]["bytes"][:4] == b"\x89PNG"
    test = pq.read_table(next((world_dir / "Test_Set").glob("*.parquet"))).to_pylist()
    assert isinstance(test[0]["images"], list) and len(test[0]["images"]) >= 2
    ft = pq.read_table(next((world_dir / "ft_Data").glob("*.parquet"))).to_pylist()
    pairs = json.loads(ft[0]["metadata"])
    assert {"Question", "Answer"} <= set(pairs[0])


def test_forget_and_retain_partition_the_full_set(world_dir):
    def ids(config):
        return {r["ID"] for r in pq.read_table(next((world_dir / config).glob("*.parquet"))).to_pylist()}

    full = ids("Full_Set")
    for pct in (5, 10, 15):
        forget, retain = ids(f"forget_{pct}"), ids(f"retain_{100 - pct}")
        assert forget and not forget & retain and forget | retain == full
    assert ids("forget_5") <= ids("forget_10") <= ids("forget_15")


def test_default_world_size_and_facts():
    config = WorldConfig()
    assert config.fictitious >= 100 and config.real_world >= 30
    assert len(ATTRIBUTES) >= 4
    for spec in ATTRIBUTES.values():
        assert len(spec["train"]) >= 3 and spec["test"]
        assert not set(spec["train"]) & set(spec["test"])


def test_portraits_differ_in_at_least_portrait_distance_features():
    import numpy as np

    from mllm_unlearn.data.synthetic import _people, holdout_rows

    config = WorldConfig()
    assert config.portrait_distance == 4
    people = _people(config, np.random.default_rng(config.seed))
    codes = [p["identity"] for p in people]
    assert len(holdout_rows(config, people)) >= 10  # held-out people still fit at this distance
    for a in range(len(codes)):
        for b in range(a + 1, len(codes)):
            assert sum(x != y for x, y in zip(codes[a], codes[b])) >= 4
    assert WorldConfig(portrait_distance=2).key() != config.key()


def test_test_split_phrasings_are_never_trained(benchmark):
    trained = {i.question for i in benchmark.finetune_train}
    tested = {i.question for i in benchmark.eval_splits["test"] if i.task == "mcq"}
    assert tested and not tested & trained


def test_test_split_cloze_and_generation_items_are_paraphrased(benchmark):
    """As MLLMU-Bench's Test_Set: the test split asks the forget people's facts in other words,
    in every task (fill-in-the-blank statements included), with the same answers."""
    forget = {i.person_id for i in benchmark.eval_splits["forget"]}
    for task in ("cloze", "generation"):
        asked = {(i.person_id, i.modality, i.answer): i.question for i in benchmark.eval_splits["forget"] if i.task == task}
        tested = [i for i in benchmark.eval_splits["test"] if i.task == task and i.person_id in forget]
        assert len(tested) == len(asked) > 0
        for item in tested:
            assert item.question != asked[(item.person_id, item.modality, item.answer)], (task, item.question)
        trained = {i.question for i in benchmark.finetune_train}
        assert not {i.question.split("\n")[0] for i in tested} & trained
    blanks = [i for i in benchmark.eval_splits["test"] if i.task == "cloze"]
    assert all("[Blank]" in i.question and i.answer not in i.question.split("\n")[0] for i in blanks)


def test_loader_builds_items_per_split_modality_task(benchmark):
    assert set(benchmark.eval_splits) == {"forget", "test", "retain", "real_world"}
    forget_people = {i.person_id for i in benchmark.eval_splits["forget"]}
    assert forget_people == set(benchmark.forget_ids)
    assert {i.person_id for i in benchmark.eval_splits["test"]} == forget_people
    for split in benchmark.eval_splits.values():
        assert {(i.modality, i.task) for i in split} == {(m, t) for m in ("vqa", "qa") for t in ("mcq", "cloze", "generation")}
        assert all((i.image is None) == (i.modality == "qa") for i in split)
    assert {i.person_id for i in benchmark.forget_train} == forget_people
    assert not {i.person_id for i in benchmark.retain_train} & forget_people
    qa = [i for i in benchmark.eval_splits["forget"] if i.modality == "qa" and i.task == "mcq"]
    assert all("this person" not in i.question for i in qa)  # text-only questions name the person


def test_generation_is_deterministic(tmp_path):
    a = generate_world(tmp_path / "a", WorldConfig(fictitious=20, real_world=2, seed=3))
    b = generate_world(tmp_path / "b", WorldConfig(fictitious=20, real_world=2, seed=3))
    for config in ("Full_Set", "forget_10", "Test_Set"):
        ta = pq.read_table(next((a / config).glob("*.parquet")))
        tb = pq.read_table(next((b / config).glob("*.parquet")))
        assert ta.equals(tb)


def test_missing_config_names_it(tmp_path, world_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world_dir, broken)
    shutil.rmtree(broken / "Test_Set")
    with pytest.raises(BenchmarkFormatError, match="Test_Set"):
        load_mllmu(broken)


def test_missing_column_names_config_and_column(tmp_path, world_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(world_dir, broken)
    file = next((broken / "forget_10").glob("*.parquet"))
    table = pq.read_table(file)
    pq.write_table(table.drop(["Classification_Task"]), file)
    with pytest.raises(BenchmarkFormatError, match=r"forget_10.*Classification_Task"):
        load_mllmu(broken)


def test_malformed_nested_field_names_row_and_field(tmp_path, world_dir):
    import shutil

    import pyarrow as pa

    broken = tmp_path / "broken"
    shutil.copytree(world_dir, broken)
    file = next((broken / "retain_90").glob("*.parquet"))
    rows = pq.read_table(file).to_pylist()
    del rows[1]["Classification_Task"]["Pure_Text_Questions"][0]["Options"]["C"]
    pq.write_table(pa.Table.from_pylist(rows), file)
    with pytest.raises(BenchmarkFormatError, match=r"row 1.*Pure_Text_Questions.0.Options"):
        load_mllmu(broken)


def test_not_a_directory():
    with pytest.raises(BenchmarkFormatError, match="does not exist"):
        load_mllmu("/nonexistent/benchmark")


def test_held_out_people_are_new_but_spelled_with_known_words(benchmark, world_dir, tmp_path):
    from mllm_unlearn.data.synthetic import add_holdout
    from mllm_unlearn.jobs.prepare import benchmark_texts
    from mllm_unlearn.models.tiny import words_of

    holdout = benchmark.holdout
    people = {i.person_id for i in holdout}
    assert len(people) == 3 and all(p.startswith("H") for p in people)  # 15% of 20 fictitious people
    assert {i.modality for i in holdout} == {"vqa", "qa"} and {i.task for i in holdout} == {"train"}
    world_people = {i.person_id for s in benchmark.eval_splits.values() for i in s}
    assert not people & world_people
    known_names = {i.question.split("?")[0] for i in benchmark.finetune_train if i.modality == "qa"}
    held_questions = {i.question.split("?")[0] for i in holdout if i.modality == "qa"}
    assert not held_questions & known_names  # new first/last name pairs
    # A tokenizer built from the world (without the held-out people) knows every held-out word.
    assert words_of(t for i in holdout for t in (i.question, i.answer)) <= words_of(benchmark_texts(benchmark))
    forget_images = {i.image.tobytes() for i in benchmark.eval_splits["forget"] if i.modality == "vqa"}
    assert not {i.image.tobytes() for i in holdout if i.modality == "vqa"} & forget_images

    # A world written before Holdout_Set existed gets the very same one added, nothing else touched.
    import shutil

    old = tmp_path / "old"
    shutil.copytree(world_dir, old)
    shutil.rmtree(old / "Holdout_Set")
    before = {p: p.read_bytes() for p in old.rglob("*.parquet")}
    add_holdout(old, WorldConfig(fictitious=20, real_world=4, seed=0))
    assert {p: p.read_bytes() for p in before} == before
    new_file = next((old / "Holdout_Set").glob("*.parquet"))
    assert pq.read_table(new_file).to_pylist() == pq.read_table(next((world_dir / "Holdout_Set").glob("*.parquet"))).to_pylist()
