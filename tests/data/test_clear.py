"""CLEAR's layout: the built-in world written in it round-trips through the loader; bad input is named."""
import shutil

import pyarrow.parquet as pq
import pytest

from mllm_unlearn.data import BenchmarkFormatError, generate_world, load_clear
from mllm_unlearn.data.clear import CAPTION_PROMPTS, NAME_PROMPT, is_clear_layout
from mllm_unlearn.data.items import INJECTION_ONLY
from mllm_unlearn.data.synthetic import PERTURBED_PER_ROW

from ..conftest import SMALL_WORLD

TASKS = {"forget", "forget_facerec", "retain", "retain_facerec", "real_faces", "real_world"}


@pytest.fixture(scope="module")
def clear_dir(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("clear") / "w", SMALL_WORLD, layout="clear")


def rows(root, config):
    return pq.read_table(next((root / config).glob("*.parquet"))).to_pylist()


def test_generator_writes_every_clear_config_with_its_columns(clear_dir):
    expected = {"forget01": ["image", "caption", "name"], "retain90": ["image", "caption", "name"],
                "forget10_perturbed": ["image", "caption", "name", "paraphrased_caption", "perturbed_captions",
                                       "perturbed_names"],
                "retain_perturbed": ["image", "caption", "name", "paraphrased_caption", "perturbed_captions",
                                     "perturbed_names"],
                "real_faces": ["image", "answer", "options"], "real_world": ["question", "answer", "image", "prompt", "options"],
                "forget05+tofu": ["image", "caption", "question", "answer"], "full+tofu": ["image", "caption", "question", "answer"]}
    for config, columns in expected.items():
        table = pq.read_table(next((clear_dir / config).glob("*.parquet")))
        assert set(columns) <= set(table.column_names), config
    assert is_clear_layout(clear_dir)


def test_clear_layout_round_trips_through_the_loader(clear_dir, world_dir):
    benchmark = load_clear(clear_dir, forget_percent=10)
    assert benchmark.protocol == "clear" and set(benchmark.eval_splits) == TASKS
    forget_rows = rows(clear_dir, "forget10")
    forget_names = sorted({r["name"] for r in forget_rows})
    assert benchmark.forget_ids == forget_names and len(forget_names) == 2  # 10% of 20 people
    perturbed = rows(clear_dir, "forget10_perturbed")
    captions = benchmark.eval_splits["forget"]
    assert [i.answer for i in captions] == [r["caption"] for r in perturbed]
    assert [i.paraphrased_answer for i in captions] == [r["paraphrased_caption"] for r in perturbed]
    assert [i.perturbed_answers for i in captions] == [r["perturbed_captions"] for r in perturbed]
    assert all(i.question in CAPTION_PROMPTS and i.image is not None for i in captions)
    names = benchmark.eval_splits["forget_facerec"]
    assert [(i.question, i.answer, i.perturbed_answers) for i in names] == [
        (NAME_PROMPT, r["name"], r["perturbed_names"]) for r in perturbed]
    assert all(len(i.perturbed_answers) == PERTURBED_PER_ROW for t in TASKS for i in benchmark.eval_splits[t])
    # Retain evaluation never holds a forget person; the training splits are disjoint by person.
    assert not {i.person_id for i in benchmark.eval_splits["retain"]} & set(forget_names)
    assert {i.person_id for i in benchmark.forget_train} == set(forget_names)
    assert not {i.person_id for i in benchmark.retain_train} & set(forget_names)
    # Every caption row is trained with every caption instruction (CLEAR trains on captions only).
    assert len(benchmark.forget_train) == len(forget_rows) * len(CAPTION_PROMPTS)
    assert all(i.question in CAPTION_PROMPTS for i in benchmark.forget_train + benchmark.retain_train)
    # The built-in world's knowledge injection also asks each caption row's name (injection only).
    named = [i for i in benchmark.finetune_train if i.question == NAME_PROMPT]
    assert len(named) == len(forget_rows) + len(rows(clear_dir, "retain90")) and all(i.meta[INJECTION_ONLY] for i in named)
    assert [i for i in benchmark.finetune_train if i not in named] == benchmark.forget_train + benchmark.retain_train
    # Real-world people come with prior-knowledge training data (our pretrain_data config).
    real = {i.person_id for i in benchmark.eval_splits["real_faces"]}
    assert real and real <= {i.person_id for i in benchmark.prior_knowledge()}
    assert not [i for i in benchmark.prior_knowledge() if i.question == NAME_PROMPT]
    assert benchmark.meta["builtin_world"] is True
    # The same people and portraits as the MLLMU-Bench layout of the same world.
    mllmu = {r["name"]: r["image"]["bytes"] for c in ("Full_Set", "Retain_Set") for r in rows(world_dir, c)}
    clear_people = {r["name"]: r["image"]["bytes"] for r in rows(clear_dir, "full") if r["image"]["path"].endswith("_0.png")}
    assert len(clear_people) == SMALL_WORLD.fictitious
    assert all(mllmu[name] == image for name, image in clear_people.items())
    # The evaluation's caption instruction is seeded: the same seed gives the same prompts.
    again = load_clear(clear_dir, forget_percent=10)
    assert [i.question for i in again.eval_splits["retain"]] == [i.question for i in benchmark.eval_splits["retain"]]


def test_tofu_configs_add_text_questions_and_retain_only_drops_the_forget_split(clear_dir):
    benchmark = load_clear(clear_dir, forget_percent=5, tofu=True)
    text = [i for i in benchmark.forget_train if i.modality == "qa"]
    assert text and all(i.image is None for i in text)
    forget_names = set(benchmark.forget_ids)
    assert any(name in i.question for i in text for name in forget_names)  # TOFU-style questions name the person
    gold = benchmark.retain_only()
    trained = [i for i in gold.finetune_train if not i.meta.get(INJECTION_ONLY)]
    assert not gold.forget_train and trained == benchmark.retain_train
    assert not {id(i) for i in gold.finetune_train} & {id(i) for i in benchmark.forget_train}
    assert not {i.person_id for i in gold.finetune_train} & forget_names


def as_published(clear_dir, tmp_path):
    """The built-in world's files as a published CLEAR directory holds them (no world.json)."""
    root = tmp_path / "published"
    shutil.copytree(clear_dir, root)
    (root / "world.json").unlink()
    return root


def signature(item):
    return (item.image.tobytes() if item.image is not None else None, item.question, item.answer)


@pytest.mark.parametrize("tofu", [False, True])
def test_no_training_item_a_method_sees_is_an_evaluation_item(clear_dir, tmp_path, tofu):
    """CLEAR trains on captions: no training item is a face-recognition, real-faces or real-world
    evaluation item (same image, question and answer). Only the built-in world's knowledge
    injection asks the face-recognition question. (CLEAR's caption tasks score the trained
    captions themselves, TOFU-style: there the overlap is the protocol.)"""
    published = load_clear(as_published(clear_dir, tmp_path), forget_percent=10, tofu=tofu)
    builtin = load_clear(clear_dir, forget_percent=10, tofu=tofu)
    assert published.meta["builtin_world"] is False

    def evaluation(benchmark):
        return {signature(i) for task in ("forget_facerec", "retain_facerec", "real_faces", "real_world")
                for i in benchmark.eval_splits[task]}

    for benchmark in (published, builtin):
        seen_by_methods = benchmark.forget_train + benchmark.retain_train
        assert seen_by_methods and not {signature(i) for i in seen_by_methods} & evaluation(benchmark)
        assert not [i for i in benchmark.prior_knowledge() if i.question == NAME_PROMPT]
        captions = {(i.image.tobytes(), i.answer) for i in benchmark.eval_splits["forget"]}
        assert captions <= {(i.image.tobytes(), i.answer) for i in benchmark.forget_train if i.image is not None}
    assert not {signature(i) for i in published.finetune_train} & evaluation(published)
    assert not [i for i in published.finetune_train + published.pretrain_train if i.question == NAME_PROMPT]
    # The same captions either way; the built-in world adds only the name question, for injection.
    assert [signature(i) for i in published.forget_train] == [signature(i) for i in builtin.forget_train]
    extra = [i for i in builtin.finetune_train if i.meta.get(INJECTION_ONLY)]
    assert extra and all(i.question == NAME_PROMPT for i in extra)
    assert {signature(i) for i in extra} & {signature(i) for i in builtin.eval_splits["forget_facerec"]}


def copy_with(clear_dir, tmp_path, config, edit):
    root = tmp_path / "bad"
    shutil.copytree(clear_dir, root)
    file = next((root / config).glob("*.parquet"))
    table = pq.read_table(file)
    pq.write_table(edit(table), file)
    return root


def test_missing_column_names_config_and_column(clear_dir, tmp_path):
    root = copy_with(clear_dir, tmp_path, "forget10_perturbed", lambda t: t.drop_columns(["perturbed_names"]))
    with pytest.raises(BenchmarkFormatError, match=r"config 'forget10_perturbed' lacks column\(s\) \['perturbed_names'\]"):
        load_clear(root, forget_percent=10)


def test_empty_value_and_missing_config_are_named(clear_dir, tmp_path):
    import pyarrow as pa

    def empty_options(table):
        column = table.column_names.index("options")
        return table.set_column(column, "options", pa.array([[]] * table.num_rows, pa.list_(pa.string())))

    root = copy_with(clear_dir, tmp_path, "real_faces", empty_options)
    with pytest.raises(BenchmarkFormatError, match=r"config 'real_faces'.*column 'options' is empty"):
        load_clear(root, forget_percent=10)
    shutil.rmtree(root / "retain_perturbed")
    with pytest.raises(BenchmarkFormatError, match="CLEAR config 'retain_perturbed' is missing"):
        load_clear(root, forget_percent=10)
    with pytest.raises(BenchmarkFormatError, match="forget percent must be 1, 5 or 10"):
        load_clear(clear_dir, forget_percent=15)


def test_retain_only_works_for_mllmu_benchmarks_too(benchmark):
    gold = benchmark.retain_only()
    forget = set(benchmark.forget_ids)
    assert forget and not {i.person_id for i in gold.finetune_train} & forget
    assert len(gold.finetune_train) == len(benchmark.finetune_train) - len(benchmark.forget_train)
    assert gold.pretrain_train == benchmark.pretrain_train and gold.eval_splits is benchmark.eval_splits
