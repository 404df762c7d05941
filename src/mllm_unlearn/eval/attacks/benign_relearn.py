"""Benign relearning (VLM-UnL-Attack's out-of-distribution attack): fine-tuning the unlearned
model on data that never mentions the forget people, here the retain people only, and checking
whether the forget people come back. Knowledge that was erased cannot return from unrelated
data; knowledge that was only suppressed (a small weight change, a hook) often does, because
the fine-tuning moves the model off the narrow state unlearning left it in.

The relearning attack's machinery (eval/relearn.py): the edit baked in (or hooked on for a
steering edit), full fine-tuning with every weight kept on CPU (models this tool built) or LoRA
(others), the same step budget and learning-rate defaults; the model is restored exactly
afterwards. The training data: the training items of the retain people who are *not* in the
battery's retain control (whose questions are then measured on people the attack never saw),
plus multiple-choice renderings of them. Chance 25%.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any

from ...data.items import Benchmark
from ...data.prompts import McqRenderer
from ...models.base import VLM
from ..relearn import RelearnConfig, attacked_model, fine_tune, resolve_relearn
from .base import (
    MCQ_CHANCE,
    Attack,
    AttackConfig,
    AttackNotApplicable,
    AttackResult,
    accuracy_table,
    attack_evaluator,
    probe_sets,
    progress_bar,
    register_attack,
    score_mcq,
    stages,
)


def benign_config(cfg: AttackConfig) -> RelearnConfig:
    relearn = RelearnConfig(steps=cfg.benign_steps, eval_every=cfg.benign_steps, lr=cfg.benign_lr,
                            batch_size=cfg.benign_batch_size, lora=cfg.benign_lora, seed=cfg.seed)
    return resolve_relearn(relearn, cfg.model_built_here)


@register_attack
class BenignRelearn(Attack):
    name = "benign_relearn"
    description = "fine-tuning on retain people only, then the forget people's questions"

    def run(self, vlm: VLM, benchmark: Benchmark, edit: Any, cfg: AttackConfig) -> AttackResult:
        sets = probe_sets(benchmark, cfg)
        relearn = benign_config(cfg)
        control = {i.person_id for i in sets.retain}
        forget = set(benchmark.forget_ids)
        train_items = [i for i in benchmark.retain_train if i.person_id not in control and i.person_id not in forget]
        if not train_items:
            raise AttackNotApplicable(f"{benchmark.name} has no training items of retain people outside the control")
        if relearn.mcq_renderings:
            renderer = McqRenderer(list(benchmark.retain_train), cfg.seed)
            train_items += [renderer(i) for _ in range(relearn.mcq_renderings) for i in train_items if renderer.renderable(i)]
        plan = stages(edit)
        bar = progress_bar(len(plan), self.name, cfg)
        records = []
        for stage, stage_edit in plan:
            with attacked_model(vlm, stage_edit, full_finetune=relearn.lora is None):
                result = fine_tune(vlm, train_items, relearn, f"benign relearning ({stage})")
                evaluator = attack_evaluator(vlm, cfg)
                with stage_edit.for_task("mcq") if stage_edit is not None else nullcontext():
                    records += score_mcq(evaluator, sets, "benign_relearn", stage)
            bar.update(1)
        bar.close()
        figures = {"chance": MCQ_CHANCE, "steps": result.steps, "lr": relearn.lr,
                   "fine_tuning": "full" if relearn.lora is None else f"LoRA rank {relearn.lora.r}",
                   "train_items": len(train_items), "trained_people": len({i.person_id for i in train_items}),
                   "accuracy": accuracy_table(records).get("benign_relearn", {}),
                   "config": dataclasses.asdict(relearn)}
        return AttackResult(records, figures)
