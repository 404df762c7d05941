"""mllm-unlearn: make a multimodal LLM forget chosen knowledge, and measure how well that worked."""
from .data import Benchmark, Item, WorldConfig, generate_world, load_clear, load_mllmu
from .eval import EvalConfig, Evaluator, evaluate
from .interventions import Edit, WeightDelta, load_edit
from .jobs import FinetuneJob, RunConfig, export_peft_adapter, export_unlearned_model, run_finetune, run_pipeline
from .methods import MethodConfig, available_methods, get_method
from .models import VLM, TinySize, build_tiny_vlm, load_vlm
from .recipes import FinetuneConfig, InjectionConfig, finetune, inject_knowledge
from .version import __version__  # noqa: F401

__all__ = [
    "Benchmark", "Item", "WorldConfig", "generate_world", "load_mllmu", "load_clear", "EvalConfig", "Evaluator", "evaluate",
    "Edit", "WeightDelta", "load_edit", "MethodConfig", "available_methods", "get_method", "VLM", "TinySize",
    "build_tiny_vlm", "load_vlm", "RunConfig", "run_pipeline", "InjectionConfig", "inject_knowledge",
    "FinetuneConfig", "FinetuneJob", "finetune", "run_finetune", "export_unlearned_model", "export_peft_adapter",
]
