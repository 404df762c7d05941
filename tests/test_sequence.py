"""Sequential deletion requests: composed edits, undo, per-request rows, request files, the CLI."""
import json

import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.eval import EvalConfig
from mllm_unlearn.interventions import SequentialEdit, UndoNotExact, load_edit
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.sequence import (
    RequestFileError,
    SequenceConfig,
    context_parts,
    read_requests,
    run_sequence,
    unlearn_request,
)
from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.utils import seed_everything

from .conftest import SMALL_SIZE

FAST = {
    "ga": MethodConfig(lr=1e-3, max_steps=2, batch_size=8, progress=False),
    "manu": MethodConfig(batch_size=16, progress=False, extra={"alpha": 0.2, "selection": "per_layer"}),
    "mllmeraser": MethodConfig(batch_size=16, progress=False,
                               extra={"layers": "1", "pgd_steps": 1, "max_retain": 40, "renderings": 1,
                                      "strength": 2.0}),
}


@pytest.fixture(scope="module")
def three_forget(world_dir):
    """The small world with forget 15%: three forget people, so three single-person requests."""
    benchmark = load_mllmu(world_dir, forget_percent=15)
    assert len(benchmark.forget_ids) == 3
    return benchmark


def logits(vlm, benchmark):
    """Last-position logits on VQA and QA forget and retain questions (both towers in play)."""
    items = [i for split in ("forget", "retain") for i in benchmark.eval_splits[split] if i.task == "mcq"]
    encoder = Encoder(vlm)
    out = []
    with torch.no_grad():
        for modality in ("vqa", "qa"):
            chosen = [i for i in items if i.modality == modality][:6]
            batch = {k: v.to(vlm.device) for k, v in encoder.batch(chosen, train=False).items()}
            out.append(vlm.model(**batch).logits[:, -1].float())
    return torch.cat(out)


def sequential_parts(vlm, benchmark, method_name, requests, context="auto"):
    """The parts of a sequence of ``requests`` (person-ID groups) as ``run_sequence`` makes them."""
    method, cfg = get_method(method_name), FAST[method_name]
    retain = benchmark.retain_train + (benchmark.prior_knowledge() if method.uses_prior_knowledge else [])
    parts, records = [], []
    for k, people in enumerate(requests):
        applied = context_parts(parts, context)
        forget = [i for i in benchmark.forget_train if i.person_id in people]
        parts.append(unlearn_request(vlm, method, cfg, forget, retain, parts, applied, seed=0))
        records.append({"index": k, "people": list(people), "depends_on": applied})
    return SequentialEdit(parts, {"method": method_name, "requests": records})


def test_three_weight_edits_compose_into_the_sequential_model(tiny_vlm, three_forget, tmp_path):
    requests = [[p] for p in three_forget.forget_ids]
    vlm = tiny_vlm("llava")
    vanilla = logits(vlm, three_forget)
    edit = sequential_parts(vlm, three_forget, "ga", requests)
    assert [r["depends_on"] for r in edit.requests] == [[], [0], [0, 1]]
    # The sequential model made by hand: each request unlearned and baked in before the next.
    reference = tiny_vlm("llava")
    method, retain = get_method("ga"), three_forget.retain_train
    for people in requests:
        seed_everything(0)
        part = method.unlearn(reference, [i for i in three_forget.forget_train if i.person_id in people], retain,
                              FAST["ga"])
        part.bake(reference)
    expected = logits(reference, three_forget)
    assert not torch.allclose(expected, vanilla)
    with edit.applied(vlm):
        assert torch.equal(logits(vlm, three_forget), expected)
    assert torch.equal(logits(vlm, three_forget), vanilla)  # removed in reverse: the model as it was
    edit.save(tmp_path / "edit")
    loaded = load_edit(tmp_path / "edit")
    assert isinstance(loaded, SequentialEdit) and len(loaded.parts) == 3
    assert [r["people"] for r in loaded.requests] == requests
    with loaded.applied(vlm):
        assert torch.equal(logits(vlm, three_forget), expected)
    # Only the last request can be removed exactly; the others were trained on.
    assert [edit.exact_undo(j) for j in range(3)] == [False, False, True]
    with pytest.raises(UndoNotExact, match="request 2's part cannot be removed exactly: the parts of requests 3"):
        edit.without(1)
    approximate = edit.without(1, vlm=vlm, approximate=True)
    assert approximate.meta["undone"][-1]["exact"] is False and len(approximate.parts) == 2
    # Task arithmetic: request 3's values minus request 2's own change (its values minus request 1's).
    name = next(n for n in edit.parts[2].tensors if all(n in edit.parts[k].tensors for k in range(2)))
    v1, v2, v3 = (edit.parts[k].tensors[name] for k in range(3))
    assert torch.allclose(approximate.parts[1].tensors[name], v3 - (v2 - v1), atol=1e-6)
    assert torch.equal(logits(vlm, three_forget), vanilla)  # reading the change left the model as it was


@pytest.mark.parametrize("method", ["mllmeraser", "manu"])
def test_removing_the_middle_steering_or_mask_request_gives_the_two_request_model(method, tiny_vlm, three_forget):
    a, b, c = ([p] for p in three_forget.forget_ids)
    vlm = tiny_vlm("llava")
    full = sequential_parts(vlm, three_forget, method, [a, b, c])
    kind = {"mllmeraser": "steering", "manu": "neuron_mask"}[method]
    assert [p.kind for p in full.parts] == [kind] * 3
    assert all(full.exact_undo(j) for j in range(3)) and [r["depends_on"] for r in full.requests] == [[], [], []]
    two = sequential_parts(vlm, three_forget, method, [a, c])  # request b never made
    without = full.without(1)
    assert without.meta["undone"][-1] == {"removed_request": 1, "people": b, "exact": True}
    assert [r["people"] for r in without.requests] == [a, c]
    with full.applied(vlm):
        with_b = logits(vlm, three_forget)
    with two.applied(vlm):
        expected = logits(vlm, three_forget)
    with without.applied(vlm):
        assert torch.equal(logits(vlm, three_forget), expected)
    assert not torch.equal(with_b, expected)  # request b's part did something


def small_sequence_run(tmp_path, model_dir, world_dir, name="seq", method="ga"):
    cfg = RunConfig(name=name, model=str(model_dir), benchmark=str(world_dir), forget_percent=15, method=method,
                    method_cfg=FAST[method], runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
                    device="cpu", eval=EvalConfig(progress=False), progress=False, mia=None, relearn=None)
    return cfg, SequenceConfig(retain_items=4, real_world_items=4)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, words):
    from mllm_unlearn.models.tiny import build_tiny_vlm

    path = tmp_path_factory.mktemp("sequence") / "model"
    build_tiny_vlm("llava", words, SMALL_SIZE, seed=0).save(path)
    return path


def test_results_hold_one_row_per_request_and_a_failing_request_keeps_the_rows_before(
        tmp_path, saved_model, world_dir, three_forget, monkeypatch):
    cfg, seq = small_sequence_run(tmp_path, saved_model, world_dir)
    results = run_sequence(cfg, seq)
    run_dir = tmp_path / "runs" / "seq"
    stored = json.loads((run_dir / "results.json").read_text())
    rows = stored["sequence"]["requests"]
    assert [r["people"] for r in rows] == [[p] for p in three_forget.forget_ids]
    assert rows == json.loads(json.dumps(results["sequence"]["requests"], default=str))
    first, last = rows[0]["figures"], rows[-1]["figures"]
    assert {"current", "retain", "real_world", "pending", "forgotten"} <= set(first) and "earlier" not in first
    assert {"current", "earlier", "forgotten"} <= set(last) and "pending" not in last
    assert last["earlier"]["vqa"]["mcq_count"] == 10 and last["retain"]["qa"]["mcq_count"] == 4
    assert all(r["seconds"]["unlearn"] > 0 and r["edit"]["kind"] == "weight_delta" for r in rows)
    assert stored["sequence"]["subsets"]["retain"] == {"vqa": {"mcq": 4}, "qa": {"mcq": 4}}
    edit = load_edit(run_dir / "edit")
    assert isinstance(edit, SequentialEdit) and len(edit.parts) == 3
    assert "## Per request" in (run_dir / "report.md").read_text()
    assert "plot-curves" in (run_dir / "report.html").read_text()

    # A request that fails: the rows and the edit of the requests before it stay on disk.
    import mllm_unlearn.jobs.sequence as sequence_module

    real = sequence_module.unlearn_request
    calls = []

    def fail_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(sequence_module, "unlearn_request", fail_third)
    cfg, seq = small_sequence_run(tmp_path, saved_model, world_dir, name="failing")
    with pytest.raises(RuntimeError, match="simulated"):
        run_sequence(cfg, seq)
    stored = json.loads((tmp_path / "runs" / "failing" / "results.json").read_text())
    assert len(stored["sequence"]["requests"]) == 2
    assert stored["sequence"]["failed"]["stage"] == "request 3"
    assert len(load_edit(tmp_path / "runs" / "failing" / "edit").parts) == 2
    assert "request 3 failed" in (tmp_path / "runs" / "failing" / "report.md").read_text()


def test_request_files_are_read_and_bad_ones_named(tmp_path, three_forget):
    a, b, c = three_forget.forget_ids
    lines = tmp_path / "requests.txt"
    lines.write_text(f"# first two together\n{a}, {b}\n\n{c}\n")
    assert read_requests(lines, three_forget) == [[a, b], [c]]
    listed = tmp_path / "requests.json"
    listed.write_text(json.dumps([[c], [a, b]]))
    assert read_requests(listed, three_forget) == [[c], [a, b]]
    retained = sorted({i.person_id for i in three_forget.eval_splits["retain"]})[0]
    cases = {f"{a}\n{b} nobody\n": f"{lines}, line 2: unknown person ID 'nobody'",
             f"{a}\n{c}\n{a}\n": f"{lines}, line 3: person '{a}' is requested twice \\(also line 1\\)",
             f"{a} {retained}\n": f"{lines}, line 1: person '{retained}' is not in the forget split",
             "# nothing\n": f"{lines}: no requests"}
    for text, message in cases.items():
        lines.write_text(text)
        with pytest.raises(RequestFileError, match=message):
            read_requests(lines, three_forget)
    listed.write_text(json.dumps([[a], []]))
    with pytest.raises(RequestFileError, match="entry 2: an empty request"):
        read_requests(listed, three_forget)
    listed.write_text(json.dumps([[a], b]))
    with pytest.raises(RequestFileError, match="entry 2 must be a list of person IDs"):
        read_requests(listed, three_forget)
    with pytest.raises(RequestFileError, match="does not exist"):
        read_requests(tmp_path / "missing.txt", three_forget)


def test_cli_sequence_undo_report_compare_and_export(tmp_path, saved_model, world_dir, three_forget):
    runner = CliRunner()
    a, b, c = three_forget.forget_ids
    requests = tmp_path / "requests.txt"
    requests.write_text(f"{a}\n{b}\n{c}\n")
    common = ["--model", str(saved_model), "--benchmark", str(world_dir), "--forget", "15", "--retain-items", "4",
              "--real-world-items", "4", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
              "--device", "cpu", "--quiet"]
    result = runner.invoke(app, ["sequence", "--name", "ga", "--method", "ga", "--lr", "1e-3", "--max-steps", "1",
                                 "--batch-size", "8", "--requests", str(requests), *common])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "ga"
    assert "| 3 | " + c in result.output and f"{run / 'edit'}" in result.output
    first_cache = json.loads((run / "results.json").read_text())["vanilla_eval_cache"]
    assert first_cache["reused"] is False and first_cache["path"].startswith(str(tmp_path / "cache"))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{a}\nghost\n")
    result = runner.invoke(app, ["sequence", "--name", "bad", "--method", "ga", "--requests", str(bad), *common])
    assert result.exit_code == 2 and f"{bad}, line 2: unknown person ID 'ghost'" in result.output
    assert not (tmp_path / "runs" / "bad").exists()  # refused before any model work

    result = runner.invoke(app, ["sequence", str(run), "--undo", "1"])
    assert result.exit_code == 2 and "request 1's part cannot be removed exactly" in result.output
    result = runner.invoke(app, ["sequence", str(run), "--undo", "3"])
    assert result.exit_code == 0, result.output
    assert "Removed request 3 (" + c + ") exactly" in result.output
    undone = load_edit(run / "edit-without-request-3")
    assert [r["people"] for r in undone.requests] == [[a], [b]]
    stored = json.loads((run / "results.json").read_text())
    assert stored["sequence"]["undo"][0]["figures"]["undone"]["vqa"]["mcq_count"] == 5

    # Exact undo for a weight method: the later requests run again without request 1 ...
    result = runner.invoke(app, ["sequence", str(run), "--undo", "1", "--replay"])
    assert result.exit_code == 0, result.output
    replayed = tmp_path / "runs" / "ga-without-request-1"
    assert [r["people"] for r in json.loads((replayed / "results.json").read_text())["sequence"]["requests"]] == [[b], [c]]
    # ... which is the sequence that never had it.
    requests.write_text(f"{b}\n{c}\n")
    result = runner.invoke(app, ["sequence", "--name", "bc", "--method", "ga", "--lr", "1e-3", "--max-steps", "1",
                                 "--batch-size", "8", "--requests", str(requests), *common])
    assert result.exit_code == 0, result.output
    reread = json.loads((tmp_path / "runs" / "bc" / "results.json").read_text())
    assert reread["vanilla_eval_cache"] == {**first_cache, "reused": True,  # other requests, the same vanilla figures
                                            "parts": {"sequence": {**first_cache["parts"]["sequence"], "reused": True}}}
    assert reread["sequence"]["vanilla"] == json.loads((run / "results.json").read_text())["sequence"]["vanilla"]
    for ours, theirs in zip(load_edit(replayed / "edit").parts, load_edit(tmp_path / "runs" / "bc" / "edit").parts):
        assert ours.names == theirs.names
        assert all(torch.equal(ours.tensors[n], theirs.tensors[n]) for n in ours.tensors)
        assert all(torch.equal(ours.sparse[n].values, theirs.sparse[n].values) for n in ours.sparse)

    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    result = runner.invoke(app, ["compare", str(run), str(run), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "cmp.html").read_text()
    assert "plot-compare-vqa" in html and "plot-compare-qa" in html
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "exported" / "unlearning.json").read_text())["edit_kind"] == "sequential"


def test_context_all_stacks_mask_parts_and_then_only_the_last_undo_is_exact(tiny_vlm, three_forget):
    vlm = tiny_vlm("llava")
    stacked = sequential_parts(vlm, three_forget, "manu", [[p] for p in three_forget.forget_ids], context="all")
    assert [r["depends_on"] for r in stacked.requests] == [[], [0], [0, 1]]
    assert [stacked.exact_undo(j) for j in range(3)] == [False, False, True]
    with pytest.raises(UndoNotExact):
        stacked.without(0)
    with pytest.raises(ValueError, match="context must be one of"):
        context_parts(stacked.parts, "weights")


def test_forgotten_so_far_is_the_question_weighted_mean_of_this_and_earlier_requests():
    from mllm_unlearn.jobs.sequence import with_forgotten

    figures = {"current": {"vqa": {"mcq_accuracy": 20.0, "mcq_count": 5, "cloze_accuracy": 0.0, "cloze_count": 5,
                                   "rougeL_f": 0.2, "bleu": 0.1, "generation_count": 5}},
               "earlier": {"vqa": {"mcq_accuracy": 50.0, "mcq_count": 15, "cloze_accuracy": 40.0, "cloze_count": 15,
                                   "rougeL_f": 0.6, "bleu": 0.3, "generation_count": 15}}}
    forgotten = with_forgotten(figures)["forgotten"]["vqa"]
    assert forgotten["mcq_accuracy"] == pytest.approx(42.5) and forgotten["mcq_count"] == 20
    assert forgotten["cloze_accuracy"] == pytest.approx(30.0) and forgotten["rougeL_f"] == pytest.approx(0.5)
    assert "forgotten" not in with_forgotten({"retain": {"vqa": {"mcq_accuracy": 90.0, "mcq_count": 4}}})


def test_attacks_on_the_final_model_probe_the_requested_people_only(tmp_path, saved_model, world_dir, three_forget):
    """`sequence --attacks`: the battery on the model after the last request, its certificate over
    the requested people (here two of the three forget people), written like a run's."""
    from mllm_unlearn.eval.attacks import AttackConfig

    cfg, seq = small_sequence_run(tmp_path, saved_model, world_dir, name="attacked")
    requested = [[p] for p in three_forget.forget_ids[:2]]
    seq.requests = requested
    seq.attacks = AttackConfig(attacks=("quantization", "logit_lens"), control_people=2, batch_size=16, progress=False)
    results = run_sequence(cfg, seq)
    run_dir = tmp_path / "runs" / "attacked"
    stages = results["robustness"]["attacks"]
    assert {"plain", "quantization", "logit_lens", "certificate"} <= set(stages)
    certificate = json.loads((run_dir / "certificate.json").read_text())
    assert sorted(certificate["people"]) == sorted(p for group in requested for p in group)
    assert {r["person_id"] for r in stages["plain"]["records"] if r["group"] == "forget"} == set(certificate["people"])
    assert any(k.startswith("attack: ") for k in results["cost"]["wall_time_s"])
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored["config"]["attacks"]["attacks"] == ["quantization", "logit_lens"]
    assert "## Forgetting certificate" in (run_dir / "report.md").read_text()
    assert "Attack battery" in (run_dir / "report.html").read_text()
    # Off by default: a sequence without --attacks has no battery.
    assert small_sequence_run(tmp_path, saved_model, world_dir)[1].attacks is None
