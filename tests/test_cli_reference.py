"""docs/cli.md is the CLI reference typer's docs generator writes (`make docs`): it must match the code."""
from pathlib import Path

import typer
import typer.cli
from typer.testing import CliRunner

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_reference(tmp_path):
    fresh = tmp_path / "cli.md"
    # What `make docs` runs: typer mllm_unlearn.cli utils docs --name mllm-unlearn --output docs/cli.md
    result = CliRunner().invoke(typer.cli.app, ["mllm_unlearn.cli", "utils", "docs", "--name", "mllm-unlearn",
                                                "--output", str(fresh)])
    assert result.exit_code == 0, result.output
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: run `make docs`"
    assert fresh.read_text() == REFERENCE.read_text(), (
        f"{REFERENCE} does not match the CLI's options (typer {typer.__version__}): run `make docs` and commit it")
