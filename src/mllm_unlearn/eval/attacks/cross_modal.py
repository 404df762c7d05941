"""Cross-modal probes: a person forgotten through one route but reachable through another has
not been forgotten.

- ``portrait_to_name`` (VQA; one trial per person): the portrait alone with "Who is the person in
  this image?"; the answer "This is <name>." scored by likelihood (summed log-probability of the
  answer tokens) for every candidate name; a hit when the person's own name scores highest.
  Candidates: the forget people's and the control retain people's names, so chance is
  100 / #candidates %. A model never taught to name portraits (a built-in-world vanilla model
  trained with ``InjectionConfig.identity_copies`` 0; the default trains 2) is at chance here
  too, and the certificate then leaves the probe out as uninformative.
  The name probes also record the own name's rank among the candidates (figures ``mean_rank``;
  chance (#candidates + 1) / 2): a rank near #candidates means the model singles the person out,
  scoring their own name lowest, which is knowledge of who they are rather than its absence.
- ``name_to_facts`` (QA): the person's text-only classification questions, which name them
  (chance 25%).
- ``facts_to_name`` (QA; one trial per person): the person's facts without the name, and the
  question which candidate they belong to: each candidate's score is the summed log-likelihood
  of the person's facts (one training-form question and answer per attribute, the person's name
  replaced by the candidate's in both) and a hit when the person's own name scores highest;
  chance 100 / #candidates %. Scored by likelihood rather than by asking for the name after a
  nameless biography, which a model trained only on name -> fact questions cannot answer even
  before unlearning (the reversal curse).
"""
from __future__ import annotations

from typing import Any

from ...data.collate import Encoder
from ...data.items import Benchmark, Item
from ...data.prompts import IDENTITY_QUESTION
from ...models.base import VLM
from .base import (
    Attack,
    AttackConfig,
    AttackResult,
    ProbeSets,
    accuracy_table,
    answer_logprobs,
    attack_evaluator,
    edited,
    person_names,
    probe_sets,
    progress_bar,
    register_attack,
    score_mcq,
    stages,
)


def _best_candidate(scores: list[float], candidates: list[str]) -> str:
    return candidates[max(range(len(candidates)), key=lambda k: scores[k])]


def _rank(scores: list[float], candidates: list[str], person: str) -> int:
    """The person's own name's rank among the candidates (1 = scored highest; ties count against it)."""
    own = scores[candidates.index(person)]
    return 1 + sum(score >= own for c, score in zip(candidates, scores) if c != person)


def fact_items(benchmark: Benchmark, person: str, name: str) -> list[Item]:
    """One text-only training-form question and answer per attribute of ``person`` that name them."""
    seen: set[str] = set()
    out = []
    for item in benchmark.finetune_train:
        if item.person_id != person or item.modality != "qa" or name not in item.question or name not in item.answer:
            continue
        attribute = str(item.meta.get("Attribute", item.question))
        if attribute not in seen:
            seen.add(attribute)
            out.append(item)
    return out


def _renamed(item: Item, name: str, candidate: str) -> Item:
    return Item(item.person_id, item.split, "qa", "train", item.question.replace(name, candidate),
                item.answer.replace(name, candidate), None, None, None, dict(item.meta))


def _identification_records(asked: list[tuple[str, str]], scores: list[float], candidates: list[str], probe: str,
                            modality: str, stage: str) -> list[dict[str, Any]]:
    """One record per asked (group, person): ``scores`` holds each person's score of every candidate
    name in turn; right when the person's own name scores best (chance 1 / candidates)."""
    out = []
    for k, (group, p) in enumerate(asked):
        own = scores[k * len(candidates):(k + 1) * len(candidates)]
        out.append({"probe": probe, "stage": stage, "group": group, "person_id": p, "modality": modality,
                    "correct": _best_candidate(own, candidates) == p, "chance": 100.0 / len(candidates),
                    "rank": _rank(own, candidates, p)})
    return out


@register_attack
class CrossModal(Attack):
    name = "cross_modal"
    description = "portrait -> name, name -> facts, facts -> name"

    def run(self, vlm: VLM, benchmark: Benchmark, edit: Any, cfg: AttackConfig) -> AttackResult:
        sets = probe_sets(benchmark, cfg)
        names = person_names(benchmark)
        evaluator = attack_evaluator(vlm, cfg)
        encoder = Encoder(vlm)
        people = {group: sorted({i.person_id for i in items}) for group, items in sets.groups()}
        candidates = [p for group in ("forget", "retain") for p in people[group] if p in names]
        chance = 100.0 / len(candidates) if candidates else None
        portraits = {i.person_id: i for _, items in sets.groups() for i in items if i.modality == "vqa"}
        facts = {p: fact_items(benchmark, p, names[p]) for p in candidates}
        plan = stages(edit)
        bar = progress_bar(len(plan) * 3, self.name, cfg)
        records: list[dict[str, Any]] = []
        for stage, stage_edit in plan:
            with edited(vlm, stage_edit):
                records += score_mcq(evaluator, ProbeSets([i for i in sets.forget if i.modality == "qa"],
                                                          [i for i in sets.retain if i.modality == "qa"]),
                                     "name_to_facts", stage)
                bar.update(1)
            if len(candidates) >= 2:
                # The likelihood probes train-form prompts: the edit as set for open answers.
                with edited(vlm, stage_edit, task="generation"):
                    records += self._portrait_to_name(vlm, encoder, people, portraits, names, candidates, stage, cfg)
                    bar.update(1)
                    records += self._facts_to_name(vlm, encoder, people, facts, names, candidates, stage, cfg)
                    bar.update(1)
        bar.close()
        ranks: dict[str, Any] = {}
        for r in records:
            if "rank" in r:
                ranks.setdefault(r["probe"], {}).setdefault(r["stage"], {}).setdefault(r["group"], []).append(r["rank"])
        figures = {"candidates": len(candidates),
                   "chance": {"portrait_to_name": chance, "name_to_facts": 25.0, "facts_to_name": chance},
                   "accuracy": accuracy_table(records),
                   # the own name's mean rank among the candidates (chance: (#candidates + 1) / 2; #candidates:
                   # the person's own name scored lowest of all, i.e. singled out rather than forgotten)
                   "mean_rank": {probe: {stage: {group: sum(v) / len(v) for group, v in groups.items()}
                                         for stage, groups in stages_.items()} for probe, stages_ in ranks.items()}}
        if len(candidates) < 2:
            figures["skipped"] = (f"{len(candidates)} probed people with a known name: the name probes need at least two "
                                  "candidates")
        return AttackResult(records, figures)

    @staticmethod
    def _portrait_to_name(vlm: VLM, encoder: Encoder, people: dict[str, list[str]], portraits: dict[str, Item],
                          names: dict[str, str], candidates: list[str], stage: str, cfg: AttackConfig
                          ) -> list[dict[str, Any]]:
        asked = [(group, p) for group, members in people.items() for p in members if p in portraits and p in names]
        items = [Item(p, "attack", "vqa", "train", IDENTITY_QUESTION, f"This is {names[c]}.", portraits[p].image, None,
                      portraits[p].image_key) for _, p in asked for c in candidates]
        return _identification_records(asked, answer_logprobs(vlm, encoder, items, cfg.batch_size), candidates,
                                       "portrait_to_name", "vqa", stage)

    @staticmethod
    def _facts_to_name(vlm: VLM, encoder: Encoder, people: dict[str, list[str]], facts: dict[str, list[Item]],
                       names: dict[str, str], candidates: list[str], stage: str, cfg: AttackConfig
                       ) -> list[dict[str, Any]]:
        asked = [(group, p) for group, members in people.items() for p in members if facts.get(p)]
        items, spans = [], []
        for _, p in asked:
            for c in candidates:
                start = len(items)
                items += [_renamed(item, names[p], names[c]) for item in facts[p]]
                spans.append((start, len(items)))
        scores = answer_logprobs(vlm, encoder, items, cfg.batch_size)
        totals = [sum(scores[a:b]) for a, b in spans]
        return _identification_records(asked, totals, candidates, "facts_to_name", "qa", stage)
