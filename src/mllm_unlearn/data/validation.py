"""Validation people: the split on which ``mllm-unlearn sweep`` chooses hyperparameters, carved
out of a benchmark that has none, and left out of the figures a run with such a preset reports."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from .items import Benchmark

CARVE_OUT_REAL_PERCENT = 15  # real-world validation people: ceil(15%) of the real-world split (>= 2 people)
VALIDATION_SPLITS = ("forget", "retain", "real_world")


def carve_out_validation(benchmark: Benchmark, seed: int = 0) -> Benchmark:
    """A validation view carved out of a benchmark without validation people (MLLMU-Bench layout).

    With a ``random.Random("mllm-unlearn validation:<seed>")`` shuffle of the retain people (sorted
    ids): the first as many as the forget split holds become the validation forget group, the next
    as many the validation retain group; ceil(15%) of the real-world people (when there are at
    least two) the real-world group. Their evaluation items become the view's splits; the forget
    group's training items its ``forget_train``; the other retain people's (validation retain
    group included) its ``retain_train``. A run with a preset from this view leaves all these
    people out of its reported retain and real-world figures (``exclude_validation_people``).
    """
    if benchmark.protocol != "mllmu":
        raise ValueError(f"{benchmark.name}: the sweep's validation split needs an MLLMU-Bench-layout benchmark "
                         f"(CLEAR is not supported)")
    retain_people = sorted({i.person_id for i in benchmark.eval_splits["retain"]})
    count = len(benchmark.forget_ids)
    if len(retain_people) < 2 * count + 1:
        raise ValueError(f"{benchmark.name}: carving a validation split needs more than twice as many retain people "
                         f"({len(retain_people)}) as forget people ({count})")
    rng = random.Random(f"mllm-unlearn validation:{seed}")
    order = rng.sample(retain_people, len(retain_people))
    forget_people, retain_group = set(order[:count]), set(order[count:2 * count])
    real_people = sorted({i.person_id for i in benchmark.eval_splits.get("real_world", [])})
    real_group: set[str] = set()
    if len(real_people) >= 2:
        real_group = set(rng.sample(real_people, max(1, math.ceil(len(real_people) * CARVE_OUT_REAL_PERCENT / 100))))

    def items(split: str, people: set[str], as_split: str) -> list:
        return [replace(i, split=as_split) for i in benchmark.eval_splits.get(split, []) if i.person_id in people]

    return Benchmark(
        name=f"{benchmark.name}:validation-carve-out",
        eval_splits={"forget": items("retain", forget_people, "forget"), "retain": items("retain", retain_group, "retain"),
                     "real_world": items("real_world", real_group, "real_world")},
        forget_train=[i for i in benchmark.retain_train if i.person_id in forget_people],
        retain_train=[i for i in benchmark.retain_train if i.person_id not in forget_people],
        finetune_train=benchmark.finetune_train, pretrain_train=benchmark.pretrain_train,
        forget_ids=sorted(forget_people), protocol=benchmark.protocol,
        meta={"validation": "carve-out", "seed": seed,
              "rule": "seeded shuffle of the retain people: forget group = the first len(forget) people, retain "
                      f"group = the next len(forget); real-world group = ceil({CARVE_OUT_REAL_PERCENT}%) of the "
                      "real-world people; all left out of the reported retain and real-world figures of a run "
                      "using the preset",
              "people": {"forget": sorted(forget_people), "retain": sorted(retain_group),
                         "real_world": sorted(real_group)}})


def validation_benchmark(benchmark: Benchmark, seed: int = 0) -> Benchmark:
    """The benchmark's own validation people when it has them (the built-in world), else a carve-out."""
    if benchmark.validation is not None:
        return benchmark.validation
    return carve_out_validation(benchmark, seed)


def exclude_validation_people(benchmark: Benchmark, preset: dict[str, Any], benchmark_key: str | None = None) -> Benchmark:
    """``benchmark`` without the people a preset's carved-out validation split used, in its retain and
    real-world splits (the figures a run reports). Built-in validation people are in no reported
    split: nothing to leave out then; nor when the preset records another benchmark than
    ``benchmark_key`` (its people are not this benchmark's)."""
    validation = preset.get("validation") or {}
    if validation.get("validation") != "carve-out":
        return benchmark
    if benchmark_key is not None and preset.get("benchmark") not in (None, benchmark_key):
        return replace(benchmark, meta={**benchmark.meta, "validation_people_left_out": [],
                                        "validation_note": f"the preset was chosen on {preset['benchmark']}, "
                                                           "not this benchmark: nobody left out"})
    people = {p for group in validation.get("people", {}).values() for p in group}
    splits = {split: [i for i in items if not (split in ("retain", "real_world") and i.person_id in people)]
              for split, items in benchmark.eval_splits.items()}
    left_out = sorted(people & {i.person_id for split in ("retain", "real_world")
                                for i in benchmark.eval_splits.get(split, [])})
    return replace(benchmark, eval_splits=splits,
                   meta={**benchmark.meta, "validation_people_left_out": left_out})


def describe_validation(meta: dict[str, Any]) -> str:
    """One line naming the split that chose a preset's values (reports)."""
    people = meta.get("people", {})
    sizes = ", ".join(f"{len(people.get(g, []))} {g.replace('_', '-')}" for g in VALIDATION_SPLITS)
    if meta.get("validation") == "carve-out":
        return (f"a seeded carve-out of the benchmark's retain and real-world people (seed {meta.get('seed')}; "
                f"{sizes}), left out of the reported retain and real-world figures")
    return f"the built-in world's validation people ({sizes}), in no reported split"
