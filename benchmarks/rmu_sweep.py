"""RMU settings on the default world and vanilla model: multiple-choice accuracy per split.

Prints one line per setting, forget / test / retain / real-world as VQA/QA accuracy (%), the
first two and last two training losses before it. Each argument is a JSON object of overrides
of RMU's tiny defaults: MethodConfig fields (lr, epochs, batch_size, ...) or RMU options (alpha,
layer, positions, trainable, steering_coeff). This printed the sweep in methods/defaults.py:

    PYTHONPATH=src python benchmarks/rmu_sweep.py --vanilla '{}' '{"alpha": 10}' '{"epochs": 4}'
"""
from __future__ import annotations

import argparse
import json

from _common import add_model_arguments, load_model, resolve_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--vanilla", action="store_true", help="also print the vanilla model's line")
    parser.add_argument("--items", type=int, default=150, help="items per split x modality (seeded subsample)")
    parser.add_argument("settings", nargs="*", help="JSON overrides, e.g. '{\"alpha\": 10, \"lr\": 5e-3}'")
    args = parser.parse_args()

    from mllm_unlearn.data import load_mllmu
    from mllm_unlearn.eval import EvalConfig, Evaluator
    from mllm_unlearn.methods import get_method
    from mllm_unlearn.methods.defaults import method_defaults

    root, model = resolve_inputs(args)
    benchmark = load_mllmu(root, forget_percent=10)
    vlm = load_model(args, model)
    evaluator = Evaluator(vlm, EvalConfig(tasks=("mcq",), progress=False, max_items_per_group=args.items))

    def line(tag: str, results: dict) -> None:
        figures = results["figures"]
        cells = [f"{split} {figures[split]['vqa']['mcq_accuracy']:.0f}/{figures[split]['qa']['mcq_accuracy']:.0f}"
                 for split in ("forget", "test", "retain", "real_world")]
        print(tag, " ".join(cells), flush=True)

    if args.vanilla:
        line("vanilla", evaluator.evaluate(benchmark))
    for setting in args.settings:
        cfg = method_defaults("rmu")
        cfg.progress = False
        for key, value in json.loads(setting).items():
            if key in ("extra", "lora") or not hasattr(cfg, key):
                cfg.extra[key] = value
            else:
                setattr(cfg, key, value)
        edit = get_method("rmu").unlearn(vlm, benchmark.forget_train, benchmark.retain_train, cfg)
        losses = edit.meta["losses"]
        print(f"  losses {[round(x, 3) for x in losses[:2]]} ... {[round(x, 3) for x in losses[-2:]]}")
        line(setting, evaluator.evaluate(benchmark, edit))


if __name__ == "__main__":
    main()
