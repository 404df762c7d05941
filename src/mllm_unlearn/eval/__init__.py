"""MLLMU-Bench evaluation: per split x modality x task figures and per-item predictions."""
from .evaluator import EvalConfig, Evaluator, evaluate

__all__ = ["EvalConfig", "Evaluator", "evaluate"]
