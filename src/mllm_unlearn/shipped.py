"""Deprecated (0.3): ``mllm_unlearn.shipped`` moved to ``mllm_unlearn.recipes.shipped``. The old names stay importable
from here for one release (each access warns)."""
from .utils import moved_names

__getattr__ = moved_names(__name__, {
    'SHIPPED_ROOT': 'mllm_unlearn.recipes.shipped',
    'MANIFEST': 'mllm_unlearn.recipes.shipped',
    'WEIGHTS': 'mllm_unlearn.recipes.shipped',
    'file_sha256': 'mllm_unlearn.recipes.shipped',
    'training_data_fingerprint': 'mllm_unlearn.recipes.shipped',
    'shipped_model': 'mllm_unlearn.recipes.shipped',
    'shipped_models': 'mllm_unlearn.recipes.shipped',
    'verify_shipped': 'mllm_unlearn.recipes.shipped',
    'install_shipped': 'mllm_unlearn.recipes.shipped',
    'write_shipped': 'mllm_unlearn.recipes.shipped',
})
