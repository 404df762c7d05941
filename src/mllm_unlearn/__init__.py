"""mllm-unlearn: make a multimodal LLM forget chosen knowledge, and measure how well that worked."""
__version__ = "0.1.0"

from .data import Benchmark, Item, WorldConfig, generate_world, load_clear, load_mllmu  # noqa: E402
from .eval import EvalConfig, Evaluator, evaluate  # noqa: E402
from .interventions import Edit, WeightDelta, load_edit  # noqa: E402
from .methods import MethodConfig, available_methods, get_method  # noqa: E402
from .models import VLM, TinySize, build_tiny_vlm, load_vlm  # noqa: E402
from .pipeline import RunConfig, run_pipeline  # noqa: E402
from .training import FinetuneConfig, FinetuneJob, InjectionConfig, finetune, inject_knowledge, run_finetune  # noqa: E402

__all__ = [
    "Benchmark", "Item", "WorldConfig", "generate_world", "load_mllmu", "load_clear", "EvalConfig", "Evaluator", "evaluate",
    "Edit", "WeightDelta", "load_edit", "MethodConfig", "available_methods", "get_method", "VLM", "TinySize",
    "build_tiny_vlm", "load_vlm", "RunConfig", "run_pipeline", "InjectionConfig", "inject_knowledge",
    "FinetuneConfig", "FinetuneJob", "finetune", "run_finetune",
]
