"""What the commands do, as Python functions: ``run_pipeline`` (``mllm-unlearn run``), ``run_sweep``,
``run_sequence`` / ``undo_request`` / ``replay_without``, ``run_finetune``, ``attack_existing_run``
and the exports. Each builds on the library below (data, models, methods, eval, recipes, report)."""
from .attack import attack_existing_run
from .config import RunConfig
from .export import export_peft_adapter, export_unlearned_model
from .finetune import FinetuneJob, run_finetune
from .run import run_pipeline
from .sequence import SequenceConfig, replay_without, run_sequence, undo_request
from .sweep import SweepConfig, run_sweep

__all__ = ["attack_existing_run", "RunConfig", "export_peft_adapter", "export_unlearned_model", "FinetuneJob",
           "run_finetune", "run_pipeline", "SequenceConfig", "replay_without", "run_sequence", "undo_request",
           "SweepConfig", "run_sweep"]
