"""A run folder changes as one unit, stays under --runs-dir, is locked while a run writes it, and
refuses to be read against an edit its figures do not belong to; files follow the umask."""
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.interventions import WeightDelta, load_edit
from mllm_unlearn.jobs import run_folder
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.jobs.run_folder import RunFolderBusy, check_run_name, edit_digest, open_run_folder
from mllm_unlearn.methods import MethodConfig
from mllm_unlearn.utils import atomic_directory, atomic_write_text

from .test_pipeline import small_run


def fast_run(root: Path, name: str, lr: float):
    """A small run with no robustness stages (seconds once the vanilla model is cached)."""
    return replace(small_run(root, "cache", name), mia=None, relearn=None,
                   method_cfg=MethodConfig(lr=lr, max_steps=2, batch_size=8, progress=False))


def consistent(run: Path) -> float:
    """The lr of a complete run folder whose results.json and edit/ belong together."""
    results = json.loads((run / "results.json").read_text())
    assert results["complete"] is True, "an incomplete run in place of a complete one"
    assert results["edit"]["sha256"] == edit_digest(run / "edit"), "edit/ is not the edit results.json measured"
    edit_lr = json.loads((run / "edit" / "edit.json").read_text())["meta"]["config"]["lr"]
    assert edit_lr == results["config"]["method_config"]["lr"]
    return edit_lr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run ``f1`` (lr 1e-3) and the root its runs and cache live under."""
    root = tmp_path_factory.mktemp("runfolder")
    run_pipeline(fast_run(root, "f1", 1e-3))
    return root


# --- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "/abs/path", "", ".", "..", "a/b", "a\0b", ".hidden"])
@pytest.mark.parametrize("command", ["run", "sequence"])
def test_a_name_must_be_one_folder_under_the_runs_dir(tmp_path, name, command):
    with pytest.raises(ValueError, match="must be one folder name under --runs-dir"):
        check_run_name(name)
    runs = tmp_path / "sub" / "runs"
    result = CliRunner().invoke(app, [command, "--name", name, "--runs-dir", str(runs), "--cache-dir",
                                      str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 2 and "must be one folder name under --runs-dir" in result.output, result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing written anywhere, not even the runs folder
    assert not Path("/abs/path").exists()


def test_a_folder_that_is_not_a_run_is_not_replaced(tmp_path):
    (tmp_path / "runs" / "data").mkdir(parents=True)
    (tmp_path / "runs" / "data" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a run folder"):
        with open_run_folder(tmp_path / "runs", "data"):
            pass
    assert (tmp_path / "runs" / "data" / "notes.txt").read_text() == "mine"


# --- the lock ------------------------------------------------------------------------------------
def test_a_second_run_with_the_same_name_is_refused_at_once(tmp_path):
    with open_run_folder(tmp_path / "runs", "same") as folder:
        with pytest.raises(RunFolderBusy, match=rf"is being written by another run \(process {os.getpid()}"):
            run_pipeline(fast_run(tmp_path, "same", 1e-3))
        assert folder.work == tmp_path / "runs" / "same"
    with open_run_folder(tmp_path / "runs", "same"):  # released when the first run ended
        pass


# --- one unit ------------------------------------------------------------------------------------
def test_a_rerun_killed_at_any_step_leaves_the_old_or_the_new_complete_run(finished, monkeypatch, tmp_path):
    """Every file or folder a rerun puts in place is an ``os.replace`` (or the swap's exchange): the
    disk after each is what a SIGKILL there would leave. Each must hold one complete run, and the
    next run on that disk must find it so (prepare() finishes or undoes a half swap)."""
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    assert consistent(runs / "f1") == 1e-3
    snapshots: list[Path] = []
    real_replace, real_exchange = os.replace, run_folder._exchange

    def snapshot() -> None:
        copy = tmp_path / "kills" / str(len(snapshots))
        shutil.copytree(runs, copy, symlinks=True)
        snapshots.append(copy)

    def replace_then_snapshot(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        if Path(dst).is_relative_to(runs):
            snapshot()

    def exchange_then_snapshot(a, b):
        done = real_exchange(a, b)
        snapshot()
        return done

    monkeypatch.setattr(os, "replace", replace_then_snapshot)
    monkeypatch.setattr(run_folder, "_exchange", exchange_then_snapshot)
    rerun = replace(fast_run(finished, "f1", 3e-3), runs_dir=str(runs))
    run_pipeline(rerun)
    monkeypatch.undo()
    assert consistent(runs / "f1") == 3e-3
    # the edit, results.json + 2 reports (first write), results.json (attacks off), the final mark, the swap
    assert len(snapshots) >= 6
    seen = []
    for copy in snapshots:
        seen.append(consistent(copy / "f1"))
        with open_run_folder(copy, "f1"):  # the next run on this disk: finds one complete run
            pass
        assert consistent(copy / "f1") == seen[-1]
        assert not list(copy.glob(".f1.old-*"))
        # A staging folder left holds the stopped rerun's output (marked), or is gone.
        assert all((p / run_folder.STAGING_MARK).is_file() for p in copy.glob(".f1.staging-*"))
    assert seen[0] == 1e-3 and seen[-1] == 3e-3 and sorted(set(seen)) == [1e-3, 3e-3]
    assert seen == sorted(seen), "the new run must never be replaced by the old one again"


def test_a_swap_without_renameat2_stopped_halfway_is_completed_by_the_next_run(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "results.json").write_text('{"complete": true, "config": {"lr": 1}}')
    monkeypatch.setattr(run_folder, "_exchange", lambda a, b: False)  # a file system without renameat2
    killed = tmp_path / "killed"
    real_replace = os.replace

    def snapshot_between_the_renames(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        if ".r.old-" in str(dst):
            shutil.copytree(runs, killed)  # the disk a SIGKILL here would leave

    with open_run_folder(runs, "r") as folder:
        atomic_write_text(folder.work / "results.json", '{"complete": true, "config": {"lr": 2}}')
        monkeypatch.setattr(os, "replace", snapshot_between_the_renames)
        folder.commit()
    monkeypatch.undo()
    assert json.loads((runs / "r" / "results.json").read_text())["config"]["lr"] == 2
    assert not (killed / "r").exists()  # the old run aside, the new one still staged
    with open_run_folder(killed, "r"):  # the next run puts the old one back before anything else
        assert (killed / "r" / "results.json").is_file()
    assert json.loads((killed / "r" / "results.json").read_text())["config"]["lr"] == 1
    assert not list(killed.glob(".r.old-*"))


def test_a_stopped_first_run_keeps_its_figures_marked_incomplete_and_a_stopped_rerun_keeps_the_old_run(
        finished, monkeypatch, tmp_path, capsys):
    import mllm_unlearn.jobs.run as pipeline

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped by the test after the robustness stages")

    monkeypatch.setattr(pipeline, "run_attacks", stopped)
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        run_pipeline(replace(fast_run(finished, "first", 1e-3), runs_dir=str(runs)))
    partial = json.loads((runs / "first" / "results.json").read_text())
    assert partial["complete"] is False and partial["unlearned"]["figures"]  # measured figures kept in place
    assert (runs / "first" / "report.md").is_file()

    with pytest.raises(RuntimeError, match="stopped by the test"):
        run_pipeline(replace(fast_run(finished, "f1", 3e-3), runs_dir=str(runs)))
    assert consistent(runs / "f1") == 1e-3  # the old complete run, untouched
    (staged,) = runs.glob(".f1.staging-*")
    assert json.loads((staged / "results.json").read_text())["complete"] is False
    assert f"what this run wrote is in {staged}" in capsys.readouterr().err
    # The next run names it and leaves it for the user; the partial first run is replaced by a finished one.
    monkeypatch.undo()
    run_pipeline(replace(fast_run(finished, "first", 1e-3), runs_dir=str(runs)))
    assert consistent(runs / "first") == 1e-3 and staged.is_dir()


def test_a_diverged_runs_last_good_edit_stays_under_the_runs_dir(finished, monkeypatch, tmp_path):
    from mllm_unlearn.methods import get_method
    from mllm_unlearn.methods.base import UnlearningDiverged

    def diverge(self, vlm, forget, retain, cfg):
        raise UnlearningDiverged("loss became nan at step 2", WeightDelta({"w": torch.zeros(1)}))

    monkeypatch.setattr(type(get_method("ga")), "unlearn", diverge)
    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    for name, where in (("new", runs / "new"), ("f1", None)):
        with pytest.raises(UnlearningDiverged) as raised:
            run_pipeline(replace(fast_run(finished, name, 3e-3), runs_dir=str(runs)))
        if where is None:  # a rerun: beside the previous complete run, which stays
            (where,) = runs.glob(f".{name}.staging-*")
            assert consistent(runs / "f1") == 1e-3
        assert f"saved in {where / 'edit-last-good'}." in str(raised.value)
        assert (where / "edit-last-good" / "edit.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_export_attack_and_report_refuse_an_edit_that_is_not_the_measured_one(finished, tmp_path):
    run = tmp_path / "f1"
    shutil.copytree(finished / "runs" / "f1", run)
    edit = load_edit(run / "edit")
    edit.tensors = {name: value + 1 for name, value in edit.tensors.items()}
    edit.save(run / "edit")
    for args in (["export", str(run), "--out", str(tmp_path / "out")], ["attack", str(run)], ["report", str(run)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{run / 'edit'} is not the edit {run / 'results.json'} measured" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_leaves_the_old_run(finished, tmp_path, monkeypatch):
    import errno

    runs = tmp_path / "runs"
    shutil.copytree(finished / "runs", runs)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError, match="No space left on device") as raised:
        run_pipeline(replace(fast_run(finished, "f1", 3e-3), runs_dir=str(runs)))
    assert raised.value.filename.endswith("results.json")
    (staged,) = runs.glob(".f1.staging-*")  # what it wrote stays aside (its edit) ...
    assert (staged / "edit" / "edit.json").is_file()
    assert consistent(runs / "f1") == 1e-3  # ... and the old run is intact
    # The command line says it in one line naming the file (exit 1: nothing wrong with the input).
    result = CliRunner().invoke(app, ["report", str(runs / "f1")])
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"error: {runs / 'f1' / 'report.md'}: No space left on device"]
    assert consistent(runs / "f1") == 1e-3


# --- file modes ----------------------------------------------------------------------------------
def test_files_and_folders_follow_the_umask(finished, tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inside").write_text("y")
        WeightDelta({"w": torch.ones(2)}).save(tmp_path / "edit")
        run_pipeline(replace(fast_run(finished, "modes", 1e-3), runs_dir=str(tmp_path / "runs")))
    finally:
        os.umask(previous)
    paths = [tmp_path / "a.txt", tmp_path / "folder", tmp_path / "edit",
             *(p for p in (tmp_path / "edit").rglob("*")), *(tmp_path / "runs").rglob("*")]
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
