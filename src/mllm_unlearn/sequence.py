"""Deprecated (0.3): ``mllm_unlearn.sequence`` moved to ``mllm_unlearn.jobs.sequence``. The old names stay importable
from here for one release (each access warns)."""
from .utils import moved_names

__getattr__ = moved_names(__name__, {
    'CONTEXTS': 'mllm_unlearn.jobs.sequence',
    'GROUPS': 'mllm_unlearn.jobs.sequence',
    'GROUP_LABELS': 'mllm_unlearn.jobs.sequence',
    'RequestFileError': 'mllm_unlearn.jobs.sequence',
    'SequenceConfig': 'mllm_unlearn.jobs.sequence',
    'read_requests': 'mllm_unlearn.jobs.sequence',
    'validate_requests': 'mllm_unlearn.jobs.sequence',
    'default_requests': 'mllm_unlearn.jobs.sequence',
    'evaluation_subsets': 'mllm_unlearn.jobs.sequence',
    'grouped_view': 'mllm_unlearn.jobs.sequence',
    'with_forgotten': 'mllm_unlearn.jobs.sequence',
    'evaluate_groups': 'mllm_unlearn.jobs.sequence',
    'context_parts': 'mllm_unlearn.jobs.sequence',
    'edit_record': 'mllm_unlearn.jobs.sequence',
    'unlearn_request': 'mllm_unlearn.jobs.sequence',
    'run_sequence': 'mllm_unlearn.jobs.sequence',
    'requested_view': 'mllm_unlearn.jobs.sequence',
    'attack_final_model': 'mllm_unlearn.jobs.sequence',
    'run_config_from': 'mllm_unlearn.jobs.sequence',
    'undo_request': 'mllm_unlearn.jobs.sequence',
    'replay_without': 'mllm_unlearn.jobs.sequence',
})
