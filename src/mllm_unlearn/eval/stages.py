"""Running a measuring stage so that its failure never loses what was measured before: a stage
that raises (out of memory included) becomes a record in results.json and the next stage runs.
Serves a run's robustness stages, the attack battery and sequential requests."""
from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

import torch

# What results.json holds for a stage until it finishes (it is rewritten after each stage).
STAGE_PENDING = "not run yet: the run stopped before this stage finished (results.json is rewritten after each stage)"


def stage_failure(stage: str, error: BaseException) -> dict[str, Any]:
    """What results.json records of a stage that raised: the stage, the error's type and message."""
    return {"stage": stage, "error": type(error).__name__, "message": str(error),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:]}


def run_stage(stage: str, work: Callable[[], dict[str, Any]],
              not_applicable: tuple[type[BaseException], ...] = ()) -> dict[str, Any]:
    """``work()``'s outcome; ``{"skipped": why}`` when it raises one of ``not_applicable`` (the
    benchmark cannot support the stage); ``{"failed": stage_failure(...)}`` with a warning on
    stderr when it raises anything else."""
    try:
        return work()
    except not_applicable as error:
        return {"skipped": str(error)}
    except Exception as error:  # noqa: BLE001 - any failure (OOM included) is recorded, the run goes on
        print(f"warning: the {stage} failed ({type(error).__name__}: {error}); recorded in results.json, "
              "the run goes on", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory error leaves cached blocks the next stage needs
        return {"failed": stage_failure(stage, error)}
