"""The evaluation cache (eval/cache.py): keys by content, JSON files read back, damage recomputed."""
import json
import os
import stat
from dataclasses import replace

from mllm_unlearn.eval import EvalConfig, Evaluator
from mllm_unlearn.eval.cache import SCORER_VERSION, EvalCache, folder_content_hash, items_content_hash
from mllm_unlearn.eval.knowledge import forget_evaluation


def test_a_model_folder_hash_follows_its_content_and_is_remembered(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights.safetensors").write_bytes(b"\0" * 100)
    (model / "injection.json").write_text("{}")  # the tool's own notes: no part of the model
    memo = tmp_path / "memo"
    first = folder_content_hash(model, memo)
    assert (memo / "file-hashes.json").is_file()
    (model / "injection.json").write_text('{"history": 1}')
    assert folder_content_hash(model, memo) == first
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in model.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert folder_content_hash(copy) == first  # by content, not by path
    (model / "weights.safetensors").write_bytes(b"\0" * 99 + b"\1")
    assert folder_content_hash(model, memo) != first


def test_items_hash_sees_pixels_and_text(benchmark):
    items = benchmark.eval_splits["forget"][:6]
    base = items_content_hash(items)
    assert items_content_hash(list(items)) == base
    vqa = next(i for i in items if i.modality == "vqa")
    flipped = vqa.image.copy()
    flipped.putpixel((0, 0), tuple(255 - v for v in flipped.getpixel((0, 0))))
    assert items_content_hash([replace(vqa, image=flipped) if i is vqa else i for i in items]) != base
    assert items_content_hash([replace(i, question=i.question + "?") if i is vqa else i for i in items]) != base


def test_fetch_reuses_recomputes_on_a_changed_key_or_when_told_and_survives_a_damaged_file(tmp_path, benchmark, capsys):
    items = benchmark.eval_splits["forget"][:4]
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"figure": value, "tasks": ("mcq",)}
        return run

    cache = EvalCache(tmp_path / "eval", {"content": "m"})
    first = cache.fetch("evaluation", items, {"batch_size": 2}, compute(1.5))
    assert first == {"figure": 1.5, "tasks": ["mcq"]}  # as it reads back from the file
    record = cache.record("evaluation")
    assert record["reused"] is False and os.path.isfile(record["path"])
    mode = stat.S_IMODE(os.stat(record["path"]).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the umask's modes, not mkstemp's 0600
    entry = json.loads(open(record["path"]).read())
    assert entry["scorer_version"] == SCORER_VERSION and entry["key"] == record["key"]

    again = EvalCache(tmp_path / "eval", {"content": "m"})
    assert again.fetch("evaluation", items, {"batch_size": 2}, compute(9.0)) == first and calls == [1.5]
    assert again.record("evaluation") == {**record, "reused": True,
                                          "parts": {"evaluation": {**record["parts"]["evaluation"], "reused": True}}}

    # Another setting, other items, another model: another key, computed.
    assert again.fetch("evaluation", items, {"batch_size": 3}, compute(2.0))["figure"] == 2.0
    assert again.fetch("evaluation", items[:3], {"batch_size": 2}, compute(3.0))["figure"] == 3.0
    other = EvalCache(tmp_path / "eval", {"content": "other"})
    assert other.fetch("evaluation", items, {"batch_size": 2}, compute(4.0))["figure"] == 4.0

    told = EvalCache(tmp_path / "eval", {"content": "m"}, reuse=False)  # --no-eval-cache
    assert told.fetch("evaluation", items, {"batch_size": 2}, compute(5.0))["figure"] == 5.0
    assert told.record("evaluation")["key"] == record["key"] and not told.record("evaluation")["reused"]

    open(record["path"], "w").write('{"part": "evaluation", "key": ')  # a half-written file
    capsys.readouterr()
    damaged = EvalCache(tmp_path / "eval", {"content": "m"})
    assert damaged.fetch("evaluation", items, {"batch_size": 2}, compute(6.0))["figure"] == 6.0
    assert "unreadable" in capsys.readouterr().err and not damaged.record("evaluation")["reused"]
    assert json.loads(open(record["path"]).read())["value"]["figure"] == 6.0  # rewritten whole

    off = EvalCache(None, {})
    assert off.fetch("evaluation", items, {}, compute(7.0))["tasks"] == ("mcq",)  # nothing read or written
    assert off.record("evaluation")["path"] is None


def test_the_forget_evaluation_serves_the_whole_evaluation_item_for_item(tiny_vlm, benchmark, monkeypatch):
    vlm = tiny_vlm("llava")
    evaluator = Evaluator(vlm, EvalConfig(max_items_per_group=5, max_new_tokens=3, batch_size=4, progress=False))
    whole = evaluator.evaluate(benchmark)
    scored = []
    original = Evaluator.score_group

    def spy(self, items, task, demos=()):
        scored.append({(i.split, task) for i in items})
        return original(self, items, task, demos)

    monkeypatch.setattr(Evaluator, "score_group", spy)
    forget = forget_evaluation(evaluator, benchmark, ("vqa", "qa"))
    assert scored == [{("forget", "mcq")}] * 2 and set(forget["figures"]) == {"forget"}
    assert forget["figures"]["forget"] == {m: {k: v for k, v in cell.items() if k.startswith("mcq")}
                                           for m, cell in whole["figures"]["forget"].items()}
    scored.clear()
    reused = evaluator.evaluate(benchmark, known=forget["predictions"])
    assert {("forget", "mcq")} not in scored and len(scored) == 4 * 3 * 2 - 2
    assert reused == whole
