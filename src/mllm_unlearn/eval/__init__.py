"""MLLMU-Bench evaluation (and CLEAR's, in clear.py): per split x modality x task figures and per-item predictions."""
from .clear import ClearEvalConfig, ClearEvaluator
from .evaluator import EvalConfig, Evaluator, evaluate

__all__ = ["ClearEvalConfig", "ClearEvaluator", "EvalConfig", "Evaluator", "evaluate"]
