"""Bad options, presets, edits, results and request files: one ``error:`` line naming the option,
file or field, before any work, never a traceback."""
import json
import os
import struct

import pytest
import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.interventions import WeightDelta
from mllm_unlearn.interventions.weight_delta import SparseSlices
from mllm_unlearn.jobs.prepare import load_given_edit
from mllm_unlearn.jobs.sequence import RequestFileError, read_requests


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: ")
    return line


# --- options and presets, checked before any work ------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "--epochs must be a whole number >= 1, got 0"),
    (["--epochs", "-1"], "--epochs must be a whole number >= 1, got -1"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "-0.001"], "--lr must be a finite number > 0, got -0.001"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--max-steps", "0"], "--max-steps must be a whole number >= 1 (or unset), got 0"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
])
@pytest.mark.parametrize("command", ["run", "sequence"])
def test_a_training_option_out_of_range_is_refused_before_any_work(tmp_path, command, args, message):
    result = CliRunner().invoke(app, [command, "--method", "ga", "--runs-dir", str(tmp_path / "runs"), "--cache-dir",
                                      str(tmp_path / "cache"), "--quiet", *args])
    assert message in one_error_line(result)
    assert not list(tmp_path.iterdir())  # no benchmark generated, no model trained, no folder made


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "--epochs must be a whole number >= 1, got 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
])
def test_finetune_refuses_an_option_out_of_range_before_any_work(tmp_path, args, message):
    result = CliRunner().invoke(app, ["finetune", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                                      *args])
    assert message in one_error_line(result)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("values", "message"), [
    ({"lr": "fast"}, "MethodConfig.lr must be a finite number > 0, got 'fast'"),
    ({"epochs": 1.5}, "MethodConfig.epochs must be a whole number >= 1, got 1.5"),
    ({"schedule": 3}, "MethodConfig.schedule must be text, got 3"),
    ({"gradient_checkpointing": "yes"}, "MethodConfig.gradient_checkpointing must be true/false or null, got 'yes'"),
])
def test_a_preset_value_of_the_wrong_kind_is_refused_at_load_naming_file_and_field(tmp_path, values, message):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"method": "ga", "values": values}))
    result = CliRunner().invoke(app, ["run", "--preset", str(preset), "--runs-dir", str(tmp_path / "runs"),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert f"error: --preset {preset}: {message}" == one_error_line(result)


def test_a_read_only_runs_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: the kernel's answer for a read-only folder, given here
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(runs) and mode & os.W_OK
                            else real_access(path, mode, **kw))
    try:
        result = CliRunner().invoke(app, ["run", "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"),
                                          "--quiet"])
    finally:
        runs.chmod(0o755)
    assert one_error_line(result, code=1) == f"error: {runs}: the runs folder is not writable"
    assert not (tmp_path / "cache").exists()


# --- damaged edits -------------------------------------------------------------------------------
def _edit(folder, sparse: bool = False, value: float = 1.0):
    tensors = {} if sparse else {"model.w": torch.full((3, 2), value)}
    slices = {"model.s": SparseSlices(0, torch.tensor([1]), torch.ones(1, 4), (3, 4))} if sparse else None
    WeightDelta(tensors, {"method": "ga"}, slices).save(folder)
    return folder / "weights.safetensors"


def _truncated(folder):
    weights = _edit(folder)
    weights.write_bytes(weights.read_bytes()[:40])
    return f"{weights}: not a readable safetensors file"


def _huge_header(folder):
    weights = _edit(folder)
    weights.write_bytes(struct.pack("<Q", 2 ** 40) + b"{}")
    return f"{weights}: not a readable safetensors file"


def _row_out_of_range(folder):
    from safetensors.torch import load_file, save_file

    weights = _edit(folder, sparse=True)
    stored = load_file(str(weights))
    stored["model.s#rows.index"] = torch.tensor([7])
    save_file(stored, str(weights))
    return f"{folder}: the saved weight_delta edit cannot be read: ValueError: weight edit: model.s names row 7"


def _nan(folder):
    weights = _edit(folder, value=float("nan"))
    return f"{weights}: model.w holds 6 non-finite value(s) (NaN or infinity)"


def _broken_header(folder):
    _edit(folder)
    (folder / "edit.json").write_text('{"kind": "weight_delta",\n')
    return f"{folder / 'edit.json'}: not valid JSON"


@pytest.mark.parametrize("damage", [_truncated, _huge_header, _row_out_of_range, _nan, _broken_header])
def test_a_damaged_edit_is_one_line_naming_its_file(tmp_path, damage):
    expected = damage(tmp_path / "edit")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "edit"), "--model", str(tmp_path / "model"),
                                      "--out", str(tmp_path / "out")])
    assert expected in one_error_line(result)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="^--edit " if damage is _nan else None) as raised:  # `run --edit` too
        load_given_edit(tmp_path / "edit", vlm=None)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_a_hand_edited_results_file_is_one_line_naming_the_field(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config": {"name": "r"}, "vanilla": ["figures"]}))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert one_error_line(result).startswith(f"error: {tmp_path / 'run' / 'results.json'}: field 'vanilla' is list, "
                                             "a run writes dict or null")
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config": "lr=1e-3"}))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert "field 'config' is str, a run writes dict" in one_error_line(result)


# --- request files -------------------------------------------------------------------------------
def test_a_requests_file_with_a_byte_order_mark_is_read(benchmark, tmp_path):
    first, second = benchmark.forget_ids[:2]
    path = tmp_path / "requests.txt"
    path.write_text(f"{first}\n{second}\n", encoding="utf-8-sig")
    assert read_requests(path, benchmark) == [[first], [second]]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", b"012\x00\x00\x01"])
def test_a_binary_requests_file_is_refused_naming_it(benchmark, tmp_path, content):
    path = tmp_path / "requests.bin"
    path.write_bytes(content)
    with pytest.raises(RequestFileError, match=f"requests file {path} is (not UTF-8 text|a binary file)"):
        read_requests(path, benchmark)
