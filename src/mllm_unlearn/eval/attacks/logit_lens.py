"""Logit lens (UnLOK-VQA's head-projection attack): knowledge suppressed only in the last layers
(or by a steering hook part-way up) is still readable from the intermediate hidden states.

For each decoder layer of the language model, the classification prompt's last-position output
state (the residual stream after that layer, steering hooks included) goes through the model's
final norm and output head; the prediction is the option letter with the highest logit among the
four letters, as the Evaluator's likelihood scorer reads the model's own output. At the last
layer this is exactly the model's own answer. The attack's figure is the best layer's forget
accuracy on the unlearned model (the attacker's best read-out, chosen on the forget people
themselves: an upper bound); the curve over layers is in the figures and the HTML report.
"""
from __future__ import annotations

from typing import Any

import torch

from ...data.items import Benchmark, Item
from ...models.base import VLM
from ..evaluator import Evaluator, batches
from .base import (
    MCQ_CHANCE,
    Attack,
    AttackConfig,
    AttackResult,
    accuracy_table,
    attack_evaluator,
    edited,
    probe_sets,
    progress_bar,
    register_attack,
    stages,
)


@torch.no_grad()
def lens_letter_logits(evaluator: Evaluator, items: list[Item]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per item (in order): the option letters' logits read at every decoder layer (layers × 4,
    letters in ``evaluator.letter_ids`` order), and the model's own last-position logits (vocab).
    The edit, if any, must already be applied."""
    vlm = evaluator.vlm
    adapter, model = vlm.adapter, vlm.model
    layers = adapter.lm_layers(model)
    norm, head = adapter.final_norm(model), adapter.output_head(model)
    letter_ids = torch.tensor(list(evaluator.letter_ids.values()), device=vlm.device)
    order = evaluator.length_order(items)
    per_item: list[torch.Tensor] = [torch.empty(0)] * len(items)
    own_rows: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for batch_positions in batches(order, evaluator.cfg.batch_size):
        batch = [items[k] for k in batch_positions]
        captured: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _m, _a, out: captured.append(adapter.layer_hidden(out)[:, -1]))
                 for layer in layers]
        try:
            logits = model(**evaluator.model_inputs(batch), logits_to_keep=1).logits[:, -1].float()
        finally:
            for hook in hooks:
                hook.remove()
        if len(captured) != len(layers):
            raise RuntimeError(f"the logit lens captured {len(captured)} layer outputs for {len(layers)} decoder layers")
        states = torch.stack(captured, dim=1)  # batch × layers × hidden
        lens = head(norm(states)).float()[..., letter_ids]  # batch × layers × 4
        for row, k in enumerate(batch_positions):
            per_item[k] = lens[row].cpu()
            own_rows[k] = logits[row].cpu()
    return per_item, torch.stack(own_rows) if own_rows else torch.empty(0)


@register_attack
class LogitLens(Attack):
    name = "logit_lens"
    description = "each decoder layer's last state decoded through the final norm and output head"

    def run(self, vlm: VLM, benchmark: Benchmark, edit: Any, cfg: AttackConfig) -> AttackResult:
        sets = probe_sets(benchmark, cfg)
        evaluator = attack_evaluator(vlm, cfg)
        letters = list(evaluator.letter_ids)
        plan = stages(edit)
        bar = progress_bar(len(plan) * 2, self.name, cfg)
        # per layer: (stage, group, person, modality, correct)
        by_layer: dict[int, list[dict[str, Any]]] = {}
        for stage, stage_edit in plan:
            with edited(vlm, stage_edit):
                for group, items in sets.groups():
                    if not items:
                        continue
                    lens, _ = lens_letter_logits(evaluator, items)
                    for item, per_layer in zip(items, lens):
                        for layer, row in enumerate(per_layer):
                            by_layer.setdefault(layer, []).append(
                                {"probe": f"logit_lens_layer_{layer}", "stage": stage, "group": group,
                                 "person_id": item.person_id, "modality": item.modality,
                                 "correct": letters[int(row.argmax())] == item.answer, "chance": MCQ_CHANCE})
                    bar.update(1)
        bar.close()
        curve = {layer: accuracy_table(records)[f"logit_lens_layer_{layer}"] for layer, records in by_layer.items()}

        def forget_all(layer: int) -> float:
            return curve[layer].get("unlearned", {}).get("forget", {}).get("all", 0.0)

        best = max(sorted(curve), key=forget_all)  # ties: the earliest layer
        records = [{**r, "probe": "logit_lens"} for r in by_layer[best]]
        figures = {
            "chance": MCQ_CHANCE, "layers": len(curve), "best_layer": best,
            "best": accuracy_table(records)["logit_lens"],
            # per layer (0 = the first decoder layer's output; the last = the model's own answer)
            "curve": {stage: {group: [{m: curve[layer].get(stage, {}).get(group, {}).get(m) for m in ("vqa", "qa", "all")}
                                      for layer in sorted(curve)] for group in ("forget", "retain")}
                      for stage, _ in plan},
        }
        return AttackResult(records, figures)
