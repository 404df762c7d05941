"""How selective a steering edit's gate is: mean steering-vector norm on forget vs retain inputs.

Prints, for a saved MLLMEraser edit, the mean norm of all its steering vectors together
(√Σ_l ‖s_l‖², edit applied) on forget, retain and real-world inputs, for the prompts the edit
was built from (the training questions in the prompt forms its options name, ``forms`` and
``retain_forms``), for held-out ones (the evaluation's multiple-choice prompts) and for the
open training questions when the gate was not built from that form, and the retain/forget
ratios (target ≤ 0.05).

    .venv/bin/python benchmarks/steering_gate.py --edit runs/mllmeraser/edit [--cache-dir .cache/mllm_unlearn]
"""
from __future__ import annotations

import argparse
import random

from _common import add_model_arguments, load_model, resolve_inputs
from mllm_unlearn.data import load_mllmu
from mllm_unlearn.data.collate import Encoder
from mllm_unlearn.interventions import load_edit
from mllm_unlearn.methods.mllmeraser import MLLMEraser
from mllm_unlearn.recipes.inject import McqRenderer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edit", required=True, help="a saved steering edit (RUN_DIR/edit)")
    add_model_arguments(parser)
    parser.add_argument("--items", type=int, default=64, help="inputs per set (seeded sample)")
    args = parser.parse_args()
    bench_dir, model = resolve_inputs(args)
    benchmark = load_mllmu(bench_dir)
    vlm, edit = load_model(args, model), load_edit(args.edit)
    encoder = Encoder(vlm)

    def mean_norm(items: list) -> float:
        items = random.Random(0).sample(items, min(len(items), args.items))
        batches = ({k: v.to(vlm.device) for k, v in encoder.batch(items[s:s + 32], train=False).items()}
                   for s in range(0, len(items), 32))
        return float(edit.steering_norms(vlm, batches).mean())

    train = {"forget": benchmark.forget_train, "retain": benchmark.retain_train, "real_world": benchmark.pretrain_train}
    options = edit.meta.get("options", {})
    forms, retain_forms = options.get("forms", ["qa"]), options.get("retain_forms", options.get("forms", ["qa"]))
    renderer = McqRenderer([i for items in train.values() for i in items], edit.meta.get("config", {}).get("seed", 0))
    used = {name: MLLMEraser.inference_prompts(items, forms if name == "forget" else retain_forms, renderer,
                                               options.get("renderings", 1))
            for name, items in train.items()}
    held = {s: [i for i in benchmark.eval_splits[s] if i.task == "mcq"] for s in ("forget", "retain", "real_world")}
    sets = [(f"used to build (training questions as {','.join(forms)} / {','.join(retain_forms)})", used),
            ("held out (evaluation MCQs)", held)]
    if "qa" not in forms:
        sets.append(("open training questions (a form the gate was not built from)", train))
    print(f"model: {model}; edit: {args.edit} (layers {edit.layers}, strength {edit.strength}, "
          f"gate reads {getattr(edit, 'pool', 'last')})")
    for name, groups in sets:
        norms = {k: mean_norm(list(v)) for k, v in groups.items()}
        print(f"{name}: mean steering norm forget {norms['forget']:.3f}, retain {norms['retain']:.3f}, real-world "
              f"{norms['real_world']:.3f}; retain/forget {norms['retain'] / norms['forget']:.3f}, real-world/forget "
              f"{norms['real_world'] / norms['forget']:.3f} (target <= 0.05)")


if __name__ == "__main__":
    main()
