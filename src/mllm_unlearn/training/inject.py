"""Deprecated (0.3): ``mllm_unlearn.training.inject`` moved to ``mllm_unlearn.recipes.inject``; prompt rendering to
``mllm_unlearn.data.prompts``. The old names stay importable from here for one release (each access warns)."""
from ..utils import moved_names

__getattr__ = moved_names(__name__, {
    'InjectionConfig': 'mllm_unlearn.recipes.inject',
    'FORMS': 'mllm_unlearn.recipes.inject',
    'IDENTITY_QUESTION': 'mllm_unlearn.data.prompts',
    'SKILL_FORMS': 'mllm_unlearn.recipes.inject',
    'McqRenderer': 'mllm_unlearn.data.prompts',
    'QA_TASK_FORMS': 'mllm_unlearn.data.prompts',
    'as_task_prompt': 'mllm_unlearn.data.prompts',
    'injection_texts': 'mllm_unlearn.recipes.inject',
    'identity_items': 'mllm_unlearn.recipes.inject',
    'augment_portrait': 'mllm_unlearn.recipes.inject',
    'inject_knowledge': 'mllm_unlearn.recipes.finetune',
    'INJECTION_CPU_THREADS': 'mllm_unlearn.recipes.inject',
    'SHARE_WEIGHT': 'mllm_unlearn.recipes.inject',
    'group_of': 'mllm_unlearn.recipes.inject',
    'injection_cache_key': 'mllm_unlearn.recipes.inject',
    'INJECTION_META': 'mllm_unlearn.recipes.inject',
    'injection_meta_text': 'mllm_unlearn.recipes.inject',
})
