"""The shared training loop, reusable losses and knowledge injection."""
from .finetune import RECIPES, FinetuneConfig, FinetuneJob, FinetuneRecipe, finetune, resolve_recipe, run_finetune
from .inject import InjectionConfig, inject_knowledge
from .loop import LoraOptions, TrainConfig, train
from .losses import sequence_logprob, sequence_nll

__all__ = ["RECIPES", "FinetuneConfig", "FinetuneJob", "FinetuneRecipe", "finetune", "resolve_recipe", "run_finetune",
           "InjectionConfig", "inject_knowledge", "LoraOptions", "TrainConfig", "train", "sequence_logprob", "sequence_nll"]
