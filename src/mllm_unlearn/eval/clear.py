"""CLEAR's protocol (TOFU-style likelihood metrics), with the released code's bugs fixed.

Per item, from one batched forward pass per answer text:
- answer NLL: mean NLL over the answer tokens only (prompt, image tokens and padding have
  label -100: the collate masks them exactly, where the released code counted the question
  with the bare tokenizer and under-masked expanded image placeholders);
- the same for the paraphrased answer and each perturbed answer;
- truth ratio TR = exp(mean_k NLL(perturbed_k) - NLL(paraphrase)), per item (the released
  ``calculate_metrics.py`` averages the perturbed loss over all items into one scalar);
- a greedy generation **with the image** (the released code generates from the prompt text
  alone) scored by ROUGE-L recall against the answer.

Per task: Prob = mean exp(-NLL) for the caption tasks, mean P(true) / (P(true) + Σ P(perturbed))
(per-token probabilities) for the others; truth-ratio score mean(min(TR, 1/TR)) on forget
tasks, mean(max(0, 1 - 1/TR)) elsewhere; ROUGE-L recall. Model utility is the harmonic mean of
the non-forget tasks' Prob, ROUGE and TR scores; forget quality is the KS-test p-value between
the forget captions' TR distributions of the evaluated model and of a gold model trained on
the retain split only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..data.collate import Encoder
from ..data.items import Benchmark, Item
from ..models.base import VLM
from ..training.losses import answer_token_nll, token_nll
from .metrics import rouge_l_recall

CLEAR_TASKS = ("forget", "forget_facerec", "retain", "retain_facerec", "real_faces", "real_world")
CAPTION_TASKS = ("forget", "retain")  # CLEAR's ``eval_log*`` tasks: Prob is exp(-NLL), not normalised
FORGET_QUALITY_TASK = "forget"  # CLEAR's forget quality reads ``eval_log_forget.json``: the captions


@dataclass
class ClearEvalConfig:
    batch_size: int = 32
    max_new_tokens: int = 300  # CLEAR's (mm/eval.py); generation stops earlier at end of sequence
    max_items_per_task: int | None = None  # the first N rows of each task (CLEAR: ds_size=300)
    rouge: bool = True  # generate and score ROUGE-L recall (the slowest part)
    seed: int = 0
    progress: bool = True


# --- per-sample statistics (pure functions, pinned by tests) -----------------------------

def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer NLL and answer-token count per sequence, shape (B,) each.

    Only positions whose label is not -100 count (prompt, image tokens and padding are -100).
    """
    nll, mask = token_nll(logits, labels)
    return nll.sum(dim=1), mask.sum(dim=1)


def truth_ratio(paraphrase_nll: np.ndarray, perturbed_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """TR_i = exp(mean_k perturbed_nll[i][k] - paraphrase_nll[i]) (per-token NLLs), per item.

    Above 1 when the paraphrased truth is likelier than the perturbed answers (TOFU's
    "paraphrased over perturbed"; TOFU's paper reports 1/TR)."""
    perturbed_mean = np.array([np.mean(row) for row in perturbed_nll], dtype=np.float64)
    return np.exp(perturbed_mean - np.asarray(paraphrase_nll, dtype=np.float64))


def truth_ratio_score(ratios: np.ndarray, forget: bool) -> float:
    """CLEAR/TOFU's task score: mean(min(TR, 1/TR)) on forget tasks (1 = indifferent between
    truth and perturbations), mean(max(0, 1 - 1/TR)) elsewhere (higher = prefers the truth)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if forget:
        return float(np.mean(np.minimum(ratios, 1.0 / ratios)))
    return float(np.mean(np.maximum(0.0, 1.0 - 1.0 / ratios)))


def normalized_probability(answer_nll_per_token: np.ndarray, perturbed_nll: Sequence[Sequence[float]]) -> np.ndarray:
    """P(true) / (P(true) + Σ_k P(perturbed_k)) per item, with per-token probabilities exp(-NLL)."""
    true = np.exp(-np.asarray(answer_nll_per_token, dtype=np.float64))
    wrong = np.array([np.exp(-np.asarray(row, dtype=np.float64)).sum() for row in perturbed_nll])
    return true / (true + wrong)


def forget_quality(truth_ratios: Sequence[float], gold_truth_ratios: Sequence[float]) -> dict[str, float]:
    """Two-sample KS test between the truth-ratio distributions of a model and the gold model."""
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(truth_ratios, dtype=np.float64), np.asarray(gold_truth_ratios, dtype=np.float64))
    return {"forget_quality": float(result.pvalue), "ks_statistic": float(result.statistic)}


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (one collapsed metric zeroes the utility, as in TOFU)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("harmonic mean of no values")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic mean needs non-negative values, got {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


# --- the evaluator ---------------------------------------------------------------------

class ClearEvaluator:
    def __init__(self, vlm: VLM, cfg: ClearEvalConfig | None = None, share_prompts_with: "ClearEvaluator | None" = None):
        """``share_prompts_with``: reuse another evaluator's encoded prompts (processor calls
        dominate a tiny model's evaluation) when both models have the same processor."""
        from .evaluator import EvalConfig, Evaluator

        self.vlm = vlm
        self.cfg = cfg or ClearEvalConfig()
        self.encoder = Encoder(vlm)
        if share_prompts_with is not None and same_processor(vlm, share_prompts_with.vlm):
            self.encoder._cache = share_prompts_with.encoder._cache
        self._generator = Evaluator(vlm, EvalConfig(batch_size=self.cfg.batch_size, max_new_tokens=self.cfg.max_new_tokens,
                                                    progress=False))
        self._generator.encoder = self.encoder

    @torch.no_grad()
    def answer_nlls(self, items: Sequence[Item]) -> np.ndarray:
        """Per-token answer NLL of each item (prompt with its image, then ``item.answer``), batched."""
        model = self.vlm.model
        was_training = model.training
        model.eval()
        out: list[np.ndarray] = []
        try:
            for start in range(0, len(items), self.cfg.batch_size):
                batch = self.encoder.batch(items[start:start + self.cfg.batch_size], train=True)
                batch = {k: v.to(self.vlm.device) for k, v in batch.items()}
                nll, mask = answer_token_nll(model, batch)  # the LM head on answer positions only
                total, count = nll.sum(dim=1), mask.sum(dim=1)
                if (count == 0).any():
                    raise ValueError("an answer has no token (empty answer text?)")
                out.append((total / count).double().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    def evaluate(self, benchmark: Benchmark, edit: Any = None, gold: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every CLEAR figure and every item's statistics; ``gold``: the gold model's results
        (from this method) for forget quality."""
        if edit is not None:
            with edit.applied(self.vlm):
                return self._evaluate(benchmark, gold)
        return self._evaluate(benchmark, gold)

    def _evaluate(self, benchmark: Benchmark, gold: dict[str, Any] | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        tasks = [t for t in CLEAR_TASKS if benchmark.eval_splits.get(t)]
        if not tasks:
            raise ValueError(f"benchmark {benchmark.name} has none of CLEAR's tasks {CLEAR_TASKS}")
        figures: dict[str, dict[str, dict[str, float]]] = {}
        predictions: list[dict[str, Any]] = []
        bar = tqdm(total=sum(len(self._rows(benchmark, t)) for t in tasks), desc="evaluate (CLEAR)", unit="item",
                   disable=not self.cfg.progress)
        for task in tasks:
            items = self._rows(benchmark, task)
            records = self.score_task(items, task)
            bar.update(len(items))
            for modality in ("vqa", "qa"):
                group = [r for r in records if r["modality"] == modality]
                if group:
                    figures.setdefault(task, {})[modality] = self.task_figures(group, task)
            predictions += [{"split": task, "task": "clear", **r} for r in records]
        bar.close()
        summary = self.summary(figures, predictions, gold)
        return {"config": asdict(self.cfg), "protocol": "clear", "figures": figures, "summary": summary,
                "predictions": predictions}

    def _rows(self, benchmark: Benchmark, task: str) -> list[Item]:
        items = benchmark.eval_splits.get(task, [])
        return items[: self.cfg.max_items_per_task] if self.cfg.max_items_per_task else list(items)

    def score_task(self, items: Sequence[Item], task: str) -> list[dict[str, Any]]:
        """Per-item NLLs, truth ratio, probability and (optionally) generation + ROUGE-L recall."""
        for item in items:
            if not item.perturbed_answers or item.paraphrased_answer is None:
                raise ValueError(f"CLEAR item of {item.person_id} in {task!r} lacks a paraphrased or perturbed answer")
        # One flat list of (prompt, answer text) pairs: answer, paraphrase (if different), perturbed.
        requests: list[Item] = []
        for item in items:
            requests.append(item)
            if item.paraphrased_answer != item.answer:
                requests.append(replace(item, answer=item.paraphrased_answer))
            requests += [replace(item, answer=text) for text in item.perturbed_answers]
        losses = iter(self.answer_nlls(requests).tolist())
        answer, paraphrase, perturbed = [], [], []
        for item in items:
            answer.append(next(losses))
            paraphrase.append(next(losses) if item.paraphrased_answer != item.answer else answer[-1])
            perturbed.append([next(losses) for _ in item.perturbed_answers])
        ratios = truth_ratio(np.array(paraphrase), perturbed)
        if task in CAPTION_TASKS:
            probs = np.exp(-np.array(answer))
        else:
            probs = normalized_probability(np.array(answer), perturbed)
        generations: list[str | None] = [None] * len(items)
        if self.cfg.rouge:
            generations = []
            for start in range(0, len(items), self.cfg.batch_size):
                generations += self._generator.generate(items[start:start + self.cfg.batch_size])
        records = []
        for k, item in enumerate(items):
            record = {"person_id": item.person_id, "modality": item.modality, "question": item.question,
                      "answer": item.answer, "image": item.image_key, "answer_nll": answer[k],
                      "paraphrase_nll": paraphrase[k], "perturbed_nll": perturbed[k], "truth_ratio": float(ratios[k]),
                      "prob": float(probs[k])}
            if generations[k] is not None:
                record["prediction"] = generations[k]
                record["rougeL_recall"] = rouge_l_recall(generations[k], item.answer)
            records.append(record)
        return records

    @staticmethod
    def task_figures(records: Sequence[dict[str, Any]], task: str) -> dict[str, float]:
        figures = {"prob": float(np.mean([r["prob"] for r in records])),
                   "truth_ratio": truth_ratio_score(np.array([r["truth_ratio"] for r in records]), task.startswith("forget")),
                   "answer_nll": float(np.mean([r["answer_nll"] for r in records])), "count": len(records)}
        if all("rougeL_recall" in r for r in records):
            figures["rougeL_recall"] = float(np.mean([r["rougeL_recall"] for r in records]))
        return figures

    @staticmethod
    def summary(figures: dict[str, dict[str, dict[str, float]]], predictions: Sequence[dict[str, Any]],
                gold: dict[str, Any] | None) -> dict[str, Any]:
        utility = [cell[m] for task, by_modality in figures.items() if not task.startswith("forget")
                   for cell in by_modality.values() for m in ("prob", "rougeL_recall", "truth_ratio") if m in cell]
        out: dict[str, Any] = {"model_utility": harmonic_mean(utility) if utility else None}
        if gold is not None:
            for task in ("forget", "forget_facerec"):
                mine, theirs = task_truth_ratios(predictions, task), task_truth_ratios(gold["predictions"], task)
                if mine and theirs:
                    fq = forget_quality(mine, theirs)
                    suffix = "" if task == FORGET_QUALITY_TASK else f"_{task.removeprefix('forget_')}"
                    out[f"forget_quality{suffix}"] = fq["forget_quality"]
                    out[f"ks_statistic{suffix}"] = fq["ks_statistic"]
        return out


def same_processor(a: VLM, b: VLM) -> bool:
    """Whether two models turn the same item into the same inputs (family, tokenizer, image processor)."""
    image_a, image_b = getattr(a.processor, "image_processor", None), getattr(b.processor, "image_processor", None)
    return (a.adapter.family == b.adapter.family and type(a.processor) is type(b.processor)
            and a.processor.tokenizer.get_vocab() == b.processor.tokenizer.get_vocab()
            and (image_a.to_dict() if image_a else None) == (image_b.to_dict() if image_b else None))


def task_truth_ratios(predictions: Sequence[dict[str, Any]], task: str) -> list[float]:
    """The per-item truth ratios of one task, read back from a results' predictions."""
    return [p["truth_ratio"] for p in predictions if p.get("split") == task and "truth_ratio" in p]
