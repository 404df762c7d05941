"""Deprecated (0.3): ``mllm_unlearn.sweep`` moved to ``mllm_unlearn.jobs.sweep``; the validation split to
``mllm_unlearn.data.validation``, preset files to ``mllm_unlearn.jobs.presets``, the sweep's report to
``mllm_unlearn.report.sweep``. The old names stay importable from here for one release (each access warns)."""
from .utils import moved_names

__getattr__ = moved_names(__name__, {
    'PRESET_FORMAT': 'mllm_unlearn.jobs.sweep',
    'CHOICE_RULE': 'mllm_unlearn.jobs.sweep',
    'CARVE_OUT_REAL_PERCENT': 'mllm_unlearn.data.validation',
    'VALIDATION_SPLITS': 'mllm_unlearn.jobs.sweep',
    'SweepConfig': 'mllm_unlearn.jobs.sweep',
    'carve_out_validation': 'mllm_unlearn.data.validation',
    'validation_benchmark': 'mllm_unlearn.data.validation',
    'exclude_validation_people': 'mllm_unlearn.data.validation',
    'describe_validation': 'mllm_unlearn.data.validation',
    'load_preset': 'mllm_unlearn.jobs.presets',
    'preset_record': 'mllm_unlearn.jobs.presets',
    'open_storage': 'mllm_unlearn.jobs.sweep',
    'trial_seed': 'mllm_unlearn.jobs.sweep',
    'run_sweep': 'mllm_unlearn.jobs.sweep',
    'trial_record': 'mllm_unlearn.jobs.sweep',
    'choose': 'mllm_unlearn.jobs.sweep',
    'choice_rule': 'mllm_unlearn.jobs.sweep',
    'write_outputs': 'mllm_unlearn.jobs.sweep',
    'sweep_markdown': 'mllm_unlearn.report.sweep',
    'front_plot': 'mllm_unlearn.report.sweep',
    'sweep_html': 'mllm_unlearn.report.sweep',
})
