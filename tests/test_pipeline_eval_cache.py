"""The vanilla figures computed once (the evaluation cache through run), and the knowledge check
on the forget split alone, before the rest of the evaluation."""
import json
from dataclasses import replace

import pytest

from mllm_unlearn.eval import EvalConfig, Evaluator
from mllm_unlearn.eval.knowledge import KnowledgeCheckFailed
from mllm_unlearn.eval.mia import MIAConfig
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.methods import MethodConfig


@pytest.fixture
def unedited_evaluations(monkeypatch):
    """The (split, task) pairs each evaluation of the unedited model scored, one set per score_group call."""
    scored: list[set[tuple[str, str]]] = []
    original = Evaluator.score_group

    def spy(self, items, task, demos=()):
        scored.append({(i.split, task) for i in items})
        return original(self, items, task, demos)

    monkeypatch.setattr(Evaluator, "score_group", spy)
    return scored


def random_model_run(tmp_path, tiny_vlm, world_dir, name: str, **changes) -> RunConfig:
    checkpoint = tmp_path / "random-model"
    if not checkpoint.is_dir():
        tiny_vlm("llava").save(checkpoint)  # never trained: knows nobody
    cfg = RunConfig(name=name, model=str(checkpoint), benchmark=str(world_dir), runs_dir=str(tmp_path / "runs"),
                    cache_dir=str(tmp_path / "cache"), device="cpu", method="ga",
                    method_cfg=MethodConfig(max_steps=1, batch_size=4, progress=False),
                    eval=EvalConfig(tasks=("mcq",), max_items_per_group=4, progress=False), progress=False,
                    mia=MIAConfig(max_items=6), relearn=None, attacks=None, allow_unknown=True)
    return replace(cfg, **changes)


def test_a_second_run_reuses_the_vanilla_figures_until_its_key_changes(tmp_path, tiny_vlm, world_dir, capsys,
                                                                       unedited_evaluations):
    first = run_pipeline(random_model_run(tmp_path, tiny_vlm, world_dir, "first"))
    record = first["vanilla_eval_cache"]
    assert record["reused"] is False and set(record["parts"]) == {"knowledge", "evaluation", "generalisation", "mia"}
    path = record["path"]
    assert path.startswith(str(tmp_path / "cache" / "eval")) and json.loads(open(path).read())["key"] == record["key"]

    # Another method on the same model and benchmark: every vanilla figure read back, none scored again.
    unedited_evaluations.clear()
    second = run_pipeline(random_model_run(tmp_path, tiny_vlm, world_dir, "second", method="graddiff"))
    assert second["vanilla_eval_cache"]["reused"] is True and second["vanilla_eval_cache"]["key"] == record["key"]
    for part in ("vanilla", "knowledge_check"):
        assert second[part] == first[part]
    assert second["generalisation"]["vanilla"] == first["generalisation"]["vanilla"]
    assert second["robustness"]["mia"]["vanilla"] == first["robustness"]["mia"]["vanilla"]
    saved = json.loads((tmp_path / "runs" / "second" / "results.json").read_text())
    assert saved["vanilla_eval_cache"]["reused"] is True and saved["vanilla_eval_cache"]["path"] == path
    # What was scored is the unlearned model's evaluation and breakdown alone: as many groups as the first
    # run's unlearned part (the image-swap diagnostic and the vanilla figures are not among them).
    assert len(unedited_evaluations) == 8 + 6

    # A changed evaluation setting is another key: recomputed (the check's forget items too).
    changed = run_pipeline(random_model_run(tmp_path, tiny_vlm, world_dir, "changed",
                                            eval=EvalConfig(tasks=("mcq",), max_items_per_group=3, progress=False)))
    assert changed["vanilla_eval_cache"]["parts"]["evaluation"]["reused"] is False
    assert changed["vanilla_eval_cache"]["key"] != record["key"]
    assert changed["vanilla"]["figures"]["forget"]["vqa"]["mcq_count"] == 3
    assert changed["vanilla_eval_cache"]["parts"]["mia"]["reused"] is True  # its own settings did not change

    # --no-eval-cache: the same key, computed again, the same figures.
    forced = run_pipeline(random_model_run(tmp_path, tiny_vlm, world_dir, "forced", eval_cache=False))
    assert forced["vanilla_eval_cache"]["reused"] is False and forced["vanilla_eval_cache"]["key"] == record["key"]
    assert not any(p["reused"] for p in forced["vanilla_eval_cache"]["parts"].values())
    assert forced["vanilla"] == first["vanilla"]

    # A damaged cache file: a warning naming it, then recomputed and rewritten.
    open(path, "w").write("{not json")
    capsys.readouterr()
    damaged = run_pipeline(random_model_run(tmp_path, tiny_vlm, world_dir, "damaged"))
    assert f"evaluation cache file {path} is unreadable" in capsys.readouterr().err
    assert damaged["vanilla_eval_cache"]["parts"]["evaluation"]["reused"] is False
    assert damaged["vanilla"] == first["vanilla"] and json.loads(open(path).read())["key"] == record["key"]


def test_the_knowledge_check_stops_an_unknown_people_run_before_the_other_splits(tmp_path, tiny_vlm, world_dir,
                                                                                unedited_evaluations):
    cfg = random_model_run(tmp_path, tiny_vlm, world_dir, "refused", allow_unknown=False,
                           eval=EvalConfig(max_items_per_group=4, progress=False))  # every task asked for
    with pytest.raises(KnowledgeCheckFailed, match="does not know the forget people"):
        run_pipeline(cfg)
    # Only the forget split's classification questions of the method's modalities were scored.
    assert unedited_evaluations == [{("forget", "mcq")}] * 2
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "eval").glob("*.json")
            if p.name != "file-hashes.json"] == ["knowledge"]
