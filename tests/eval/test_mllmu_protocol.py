"""``--protocol mllmu``: MLLMU-Bench's eval.py settings exactly (prompt text for LLaVA, few-shot
per task from Full_Set, demonstration people not scored); ``ours`` stays as it was."""
import shutil
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.data.mllmu_protocol import FEW_SHOT_PROFILES, eval_prompt
from mllm_unlearn.eval import EvalConfig, Evaluator, evaluate

INSTRUCTION = "Just give ONE letter representing the answer directly."
CLOZE = "Please **ONLY** provide the correct answer that should replace the [Blank]."


def first(benchmark, split, task, modality, person=None):
    return next(i for i in benchmark.eval_splits[split]
                if i.task == task and i.modality == modality and person in (None, i.person_id))


def options(item):
    return "".join(f"{k}: {item.options[k]}\n" for k in "ABCD")


def test_llava_prompt_under_mllmu_protocol_is_the_benchmarks_text(benchmark, tiny_vlm):
    vlm = tiny_vlm("llava")
    encoder = Encoder(vlm, protocol="mllmu")
    mcq = first(benchmark, "forget", "mcq", "vqa")
    q = mcq.question
    assert encoder.prompt_text(mcq) == (f"USER: <image>\n{q}\nA: {mcq.options['A']}\nB: {mcq.options['B']}\n"
                                        f"C: {mcq.options['C']}\nD: {mcq.options['D']}\n{INSTRUCTION}\nASSISTANT:")
    # One classification demonstration (image and text): eval.py's "Question:" / "Correct Answer: X" lines.
    demo = first(benchmark, "retain", "mcq", "vqa")
    assert encoder.prompt_text(mcq, [demo]) == (
        f"USER: <image>\nQuestion: {demo.question}\n{options(demo)}Correct Answer: {demo.answer}\n"
        f"USER: <image>\n{q}\n{options(mcq)}{INSTRUCTION}\nASSISTANT:")
    text, text_demo = first(benchmark, "forget", "mcq", "qa"), first(benchmark, "retain", "mcq", "qa")
    assert text_demo.answer in "ABCD" and encoder.prompt_text(text, [text_demo]) == (
        f"USER:\nQuestion: {text_demo.question}\n{options(text_demo)}Correct Answer: {text_demo.answer}\n"
        f"USER:\n{text.question}\n{options(text)}{INSTRUCTION}\nASSISTANT:")
    # Fill-in-the-blank: "USER:<image>" (no space) in demonstrations, "Correct Answer: {gt}".
    cloze, cloze_demo = first(benchmark, "forget", "cloze", "vqa"), first(benchmark, "retain", "cloze", "vqa")
    assert cloze.question.endswith(f"\n{CLOZE}")
    assert encoder.prompt_text(cloze, [cloze_demo]) == (
        f"USER:<image>\n{cloze_demo.question}\nCorrect Answer: {cloze_demo.answer}\n"
        f"USER: <image>\n{cloze.question}\nASSISTANT:")
    text_cloze = first(benchmark, "forget", "cloze", "qa")
    assert encoder.prompt_text(text_cloze) == f"USER:\n{text_cloze.question}\nASSISTANT:"
    # Generation: the image prompt ends with a space; the text one has its own instruction.
    image_gen, text_gen = first(benchmark, "forget", "generation", "vqa"), first(benchmark, "forget", "generation", "qa")
    assert encoder.prompt_text(image_gen) == f"USER: <image>\n{image_gen.question}\nASSISTANT: "
    raw = text_gen.meta["raw_question"]
    assert encoder.prompt_text(text_gen) == (
        f"USER: {raw}\nAnswer the question based on your trained knowledge in one sentence in ENGLISH.\nASSISTANT:")
    with pytest.raises(ValueError, match="no demonstrations"):
        eval_prompt(image_gen, [cloze_demo])
    # That text is what the model reads: the processor's encoding of it, images in order.
    encoded = encoder.prompt(mcq, [demo])
    direct = vlm.processor(text=[encoder.prompt_text(mcq, [demo])], images=[demo.image, mcq.image], return_tensors="pt")
    assert encoded["input_ids"].tolist() == direct["input_ids"].tolist()
    # Our protocol keeps the llava-hf chat template (" ASSISTANT:").
    assert Encoder(vlm).prompt_text(mcq).endswith(f"{INSTRUCTION} ASSISTANT:")


def test_qwen_keeps_its_chat_template_under_mllmu_protocol(benchmark, tiny_vlm):
    vlm = tiny_vlm("qwen2.5-vl")
    item, demo = first(benchmark, "forget", "mcq", "vqa"), first(benchmark, "retain", "mcq", "vqa")
    assert Encoder(vlm, protocol="mllmu").prompt_text(item, [demo]) == Encoder(vlm).prompt_text(item, [demo])


def full_set(world_dir):
    return {str(r["ID"]): r for r in pq.read_table(next((world_dir / "Full_Set").glob("*.parquet"))).to_pylist()}


def test_mllmu_few_shot_per_task_from_full_set_not_scored_seeded(benchmark, world_dir, tiny_vlm):
    vlm = tiny_vlm("llava")
    cfg = EvalConfig(protocol="mllmu", tasks=("mcq", "cloze", "generation"), max_new_tokens=2, progress=False)
    assert cfg.scorer == "generate"  # the benchmark's scorer, unless one is given
    evaluator = Evaluator(vlm, cfg)
    plan = evaluator.few_shot_plan(benchmark)
    rows = full_set(world_dir)
    for split in ("forget", "test", "retain"):
        for task in ("mcq", "cloze"):
            people, demos = plan[(split, task)]
            split_people = {i.person_id for i in benchmark.eval_splits[split]}
            want = min(FEW_SHOT_PROFILES[task], len(split_people) - 1)
            assert len(people) == want and people <= split_people  # drawn from the split's own IDs
            assert {d.person_id for d in demos} == people and {d.split for d in demos} == {"full_set"}
            assert {d.task for d in demos} == {task} and {d.modality for d in demos} == {"vqa", "qa"}
            for person in people:  # every question of that task of the Full_Set row, with its correct answer
                row = rows[person]
                mine = [d for d in demos if d.person_id == person]
                if task == "mcq":
                    expected = [(q["Question"], q["Correct_Answer"]) for key in ("Image_Textual_Questions", "Pure_Text_Questions")
                                for q in row["Classification_Task"][key]]
                else:
                    expected = [(q["Question"].replace("__", "[Blank]"), q["Ground_Truth"]) for q in row["Mask_Task"]]
                assert sorted((d.meta.get("raw_question", d.question), d.answer) for d in mine) == sorted(expected)
        assert (split, "generation") not in plan  # generation is zero-shot
    # Test split: the demonstrations are Full_Set's (training phrasing, original portrait), not Test_Set's.
    test_people, test_demos = plan[("test", "mcq")]
    test_questions = {i.question for i in benchmark.eval_splits["test"] if i.person_id in test_people}
    assert not {d.question for d in test_demos} & test_questions
    # Real-world split: its IDs (R...) are not in Full_Set, so eval.py shows and skips nothing.
    assert all(not plan[("real_world", t)][0] and not plan[("real_world", t)][1] for t in ("mcq", "cloze"))

    results = Evaluator(vlm, replace(cfg, max_items_per_group=4)).evaluate(benchmark)

    def scored(split, task):
        return {p["person_id"] for p in results["predictions"] if p["split"] == split and p["task"] == task}

    for split in ("forget", "test", "retain", "real_world"):
        split_people = {i.person_id for i in benchmark.eval_splits[split]}
        for task in ("mcq", "cloze", "generation"):
            skipped = plan.get((split, task), (set(), []))[0]
            assert scored(split, task) and scored(split, task) <= split_people - skipped  # demonstration people not scored
    assert results["demonstration_people"]["retain"] == {t: sorted(plan[("retain", t)][0]) for t in ("mcq", "cloze")}
    assert "real_world" not in results["demonstration_people"]
    assert results["config"]["protocol"] == "mllmu" and results["config"]["max_new_tokens"] == 2
    # Seeded: another evaluator draws the same people (MLLMU-Bench's draw is unseeded).
    assert {k: v[0] for k, v in Evaluator(vlm, cfg).few_shot_plan(benchmark).items()} == {k: v[0] for k, v in plan.items()}


def test_real_world_ids_that_full_set_reuses_follow_eval_py(benchmark, tiny_vlm):
    """Retain_Set IDs repeat Full_Set IDs in the real release: eval.py then skips the celebrity
    and shows the fictitious profile of that ID (fill-in-the-blank only)."""
    real = benchmark.eval_splits["real_world"]
    fictitious = sorted({i.person_id for i in benchmark.eval_splits["retain"]})
    rename = dict(zip(sorted({i.person_id for i in real}), fictitious))
    reused = replace(benchmark, eval_splits={**benchmark.eval_splits,
                                             "real_world": [replace(i, person_id=rename[i.person_id]) for i in real]})
    plan = Evaluator(tiny_vlm("llava"), EvalConfig(protocol="mllmu", progress=False)).few_shot_plan(reused)
    skipped, shown = plan[("real_world", "mcq")]
    assert len(skipped) == 1 and not shown  # classification: drawn and skipped, no demonstration shown
    skipped, shown = plan[("real_world", "cloze")]
    assert len(skipped) == 2 and {d.person_id for d in shown} == skipped and {d.split for d in shown} == {"full_set"}


def test_without_full_set_the_mllmu_protocol_says_so(benchmark, world_dir, tmp_path, tiny_vlm):
    root = tmp_path / "nofull"
    shutil.copytree(world_dir, root)
    shutil.rmtree(root / "Full_Set")
    assert load_mllmu(root, forget_percent=10).demonstrations is None
    with pytest.raises(ValueError, match="Full_Set config, which .* lacks"):
        evaluate(tiny_vlm("llava"), replace(benchmark, demonstrations=None),
                 cfg=EvalConfig(protocol="mllmu", tasks=("mcq",), progress=False))


def test_protocol_options_are_checked():
    assert EvalConfig().protocol == "ours" and EvalConfig().scorer == "likelihood" and EvalConfig().few_shot == 0
    assert EvalConfig(protocol="mllmu", scorer="likelihood").scorer == "likelihood"  # a given scorer stays
    with pytest.raises(ValueError, match="protocol must be one of"):
        EvalConfig(protocol="tofu")
    with pytest.raises(ValueError, match="few_shot .* is an option of protocol 'ours'"):
        EvalConfig(protocol="mllmu", few_shot=1)
