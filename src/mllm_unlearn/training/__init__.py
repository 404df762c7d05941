"""The shared training loop, reusable losses and knowledge injection."""
from .inject import InjectionConfig, inject_knowledge
from .loop import LoraOptions, TrainConfig, train
from .losses import sequence_logprob, sequence_nll

__all__ = ["InjectionConfig", "inject_knowledge", "LoraOptions", "TrainConfig", "train", "sequence_logprob", "sequence_nll"]
