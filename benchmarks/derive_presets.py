"""Re-derive the tiny models' method defaults with `mllm-unlearn sweep` on the validation split.

    .venv/bin/python benchmarks/derive_presets.py [--methods ga,rmu,...] [--trials 10] [--min-retention 0.9]

For each method: a multi-objective sweep (chance-corrected forget efficacy vs retention, both
modalities) on the built-in world's validation people, with the cached vanilla model of `make run`
(trained first if missing). The chosen point (the sweep's rule, among trials keeping at least
``--min-retention``) is written to ``src/mllm_unlearn/methods/tiny_presets.json``, which
``methods/defaults.py`` lays over its hand-chosen structural options: the tiny preset's searched
values come from here, never from the splits that `docs/results.md` reports. With ``--family`` other
than LLaVA the choice is kept under the method's ``families`` entry, which that family's runs use
instead (``methods/defaults.py: swept_tiny_values``). Each sweep's
folder (trials, front, report with the front's plot) stays under ``--out``. Prints one line per
method: chosen values and their validation objectives.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.sweep import SweepConfig, run_sweep
from mllm_unlearn.methods.defaults import PRESET_FAMILY, TINY_PRESETS_FILE
from mllm_unlearn.methods.search_spaces import searchable_methods
from mllm_unlearn.utils import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(searchable_methods()))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--min-retention", type=float, default=0.9)
    parser.add_argument("--family", default="llava")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/presets")
    parser.add_argument("--model", default=None, help="a vanilla checkpoint (default: the cached one of `make run`)")
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn")
    parser.add_argument("--write", default=str(TINY_PRESETS_FILE),
                        help="the presets file to update (default: the package's tiny presets)")
    args = parser.parse_args()

    target = Path(args.write)
    presets = json.loads(target.read_text()) if target.is_file() else {}
    for method in args.methods.split(","):
        start = time.time()
        cfg = RunConfig(name=f"presets-{method}", family=args.family, seed=args.seed, model=args.model,
                        cache_dir=args.cache_dir, progress=False)
        sweep = SweepConfig(method=method, trials=args.trials, out_dir=str(Path(args.out) / method),
                            min_retention=args.min_retention, progress=False)
        summary = run_sweep(cfg, sweep)
        chosen = summary.get("chosen")
        if chosen is None:
            print(f"{method}: no finished trial", flush=True)
            continue
        searched = chosen["values"]
        choice = {
            "values": searched,
            "chosen_by": {"command": f"benchmarks/derive_presets.py --methods {method} --trials {args.trials} "
                                     f"--min-retention {args.min_retention} --family {args.family} --seed {args.seed}",
                          "rule": summary["rule"], "trial": chosen["number"], "trials": len(summary["trials"]),
                          "objectives": chosen["objectives"], "tradeoff": chosen["tradeoff"],
                          "validation": "the built-in world's validation people (in no reported split)"},
        }
        if args.family == PRESET_FAMILY:  # the default choice; other families' own choices are kept
            presets[method] = {**choice, **({"families": presets[method]["families"]}
                                            if "families" in presets.get(method, {}) else {})}
        elif method not in presets:
            sys.exit(f"{target} has no {PRESET_FAMILY} choice for {method}: derive it first "
                     f"(--family {PRESET_FAMILY}); another family's choice is kept beside it")
        else:
            presets[method].setdefault("families", {})[args.family] = choice
        atomic_write_text(target, json.dumps(presets, indent=2, sort_keys=True) + "\n")
        o = chosen["objectives"]
        print(f"{method}: {json.dumps(searched, sort_keys=True)} -> validation forget efficacy "
              f"{o['forget_efficacy']:.3f}, retention {o['retention']:.3f}, harmonic mean "
              f"{(chosen['overall'] or {}).get('harmonic_mean') or 0:.3f} ({len(summary['trials'])} trials, "
              f"{time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
