"""The shared training loop and reusable losses (knowledge injection and fine-tuning recipes:
``mllm_unlearn.recipes``)."""
from ..utils import moved_names
from .loop import LoraOptions, TrainConfig, train
from .losses import sequence_logprob, sequence_nll

__all__ = ["LoraOptions", "TrainConfig", "train", "sequence_logprob", "sequence_nll"]

# Deprecated: these names lived here until 0.2 (docs/architecture.md#moved-in-03).
__getattr__ = moved_names(__name__, {
    **dict.fromkeys(["RECIPES", "FinetuneConfig", "FinetuneRecipe", "finetune", "resolve_recipe", "inject_knowledge"],
                    "mllm_unlearn.recipes.finetune"),
    "InjectionConfig": "mllm_unlearn.recipes.inject",
    **dict.fromkeys(["FinetuneJob", "run_finetune"], "mllm_unlearn.jobs.finetune"),
})
