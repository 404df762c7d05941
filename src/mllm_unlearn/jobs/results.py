"""A run folder's files: ``results.json`` (written by ``write_results`` alone, with the reports
rendered from it) and ``certificate.json``; and what a run records of itself (``versions``)."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from ..report import render_html, render_markdown
from ..report.sequence import is_sequence, render_sequence_html, render_sequence_markdown
from ..utils import atomic_write_text, is_main_process

RESULTS_FILE = "results.json"
CERTIFICATE_FILE = "certificate.json"


def render_reports(results: dict[str, Any]) -> tuple[str, str]:
    """``(report.md, report.html)`` of one run's results: a sequence run's own reports, else a run's."""
    if is_sequence(results):
        return render_sequence_markdown(results), render_sequence_html([results])
    return render_markdown(results), render_html([results])


def write_reports(run_dir: str | Path, results: dict[str, Any]) -> str:
    """``report.md`` and ``report.html`` rendered from ``results``, each replaced atomically; returns
    the markdown (``mllm-unlearn report RUN_DIR`` re-renders them this way)."""
    markdown, page = render_reports(results)
    atomic_write_text(Path(run_dir) / "report.md", markdown)
    atomic_write_text(Path(run_dir) / "report.html", page)
    return markdown


def write_results(run_dir: str | Path, results: dict[str, Any], reports: bool = True) -> None:
    """``results.json`` and (``reports``) ``report.md``/``report.html`` rendered from it, each
    replaced atomically, by the main process only. Without ``reports`` (between attacks, where the
    plots would cost seconds each time) only results.json; ``mllm-unlearn report RUN_DIR``
    renders the reports from any results.json a stopped run left."""
    if not is_main_process():
        return
    atomic_write_text(Path(run_dir) / RESULTS_FILE, json.dumps(results, indent=2, default=str))
    if reports:
        write_reports(run_dir, results)


def write_certificate(run_dir: str | Path, certificate: dict[str, Any]) -> None:
    """``certificate.json`` beside results.json (main process only)."""
    if is_main_process():
        atomic_write_text(Path(run_dir) / CERTIFICATE_FILE, json.dumps(certificate, indent=2, default=str))


# Installed but not imported by a run (test fixtures): recorded when present, to reproduce a run's stack.
OPTIONAL_RECORDED_PACKAGES = ("datasets",)


def versions() -> dict[str, str]:
    """The versions of what a run's figures depend on (results.json's ``config.versions``): the
    modules as imported (torch with its build tag, e.g. ``+cpu``), and optional packages if installed."""
    from importlib import metadata

    import accelerate
    import numpy
    import peft
    import safetensors
    import tokenizers
    import transformers

    from ..version import __version__

    found = {"mllm_unlearn": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
             "peft": peft.__version__, "accelerate": accelerate.__version__, "safetensors": safetensors.__version__,
             "numpy": numpy.__version__}
    for name in OPTIONAL_RECORDED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
