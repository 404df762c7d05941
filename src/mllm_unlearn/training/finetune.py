"""Deprecated (0.3): ``mllm_unlearn.training.finetune`` moved to ``mllm_unlearn.recipes.finetune``; the ``finetune``
command's job to ``mllm_unlearn.jobs.finetune``. The old names stay importable from here for one release (each
access warns)."""
from ..utils import moved_names

__getattr__ = moved_names(__name__, {
    'FINETUNE_META': 'mllm_unlearn.recipes.finetune',
    'LOSS_TARGETS': 'mllm_unlearn.recipes.finetune',
    'ALL_LINEAR': 'mllm_unlearn.recipes.finetune',
    'FinetuneRecipe': 'mllm_unlearn.recipes.finetune',
    'RECIPES': 'mllm_unlearn.recipes.finetune',
    'FinetuneConfig': 'mllm_unlearn.recipes.finetune',
    'resolve_recipe': 'mllm_unlearn.recipes.finetune',
    'training_items': 'mllm_unlearn.recipes.finetune:finetune_items',
    'data_hash': 'mllm_unlearn.recipes.finetune',
    'finetune': 'mllm_unlearn.recipes.finetune',
    'FinetuneJob': 'mllm_unlearn.jobs.finetune',
    'state_dir_of': 'mllm_unlearn.jobs.finetune',
    'check_output': 'mllm_unlearn.jobs.finetune',
    'run_finetune': 'mllm_unlearn.jobs.finetune',
})
