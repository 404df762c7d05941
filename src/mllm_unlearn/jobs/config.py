"""What a run is: ``RunConfig``, the one configuration ``run``, ``sequence``, ``sweep`` and
``finetune`` build their work from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data import WorldConfig
from ..data.layouts import CLEAR_FORGET_PERCENTS, MLLMU_FORGET_PERCENTS
from ..eval import EvalConfig
from ..eval.attacks import AttackConfig
from ..eval.knowledge import DEFAULT_MIN_KNOWLEDGE
from ..eval.mia import MIAConfig
from ..eval.relearn import RelearnConfig
from ..methods import MethodConfig
from ..methods.defaults import DEFAULT_METHOD
from ..models import TinySize
from ..recipes.inject import InjectionConfig
from ..utils import DTYPES

BUILTIN_CLEAR = "clear"  # ``--benchmark clear``: the built-in world in CLEAR's layout
RETAIN_REFERENCE = "retain-finetuned"  # ``-o reference=retain-finetuned``: the tool's cached retain-only model



def check_dtype_and_forget_percent(cfg: Any) -> None:
    """``cfg.dtype`` ("auto" or a known dtype) and ``cfg.forget_percent`` (a published split of either
    benchmark) of a job's config; the error names the config's class and field."""
    name = type(cfg).__name__
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise ValueError(f"{name}.dtype must be one of {('auto', *DTYPES)}, got {cfg.dtype!r}")
    if cfg.forget_percent not in MLLMU_FORGET_PERCENTS + CLEAR_FORGET_PERCENTS:
        raise ValueError(f"{name}.forget_percent must be one of {MLLMU_FORGET_PERCENTS} (MLLMU-Bench) or "
                         f"{CLEAR_FORGET_PERCENTS} (CLEAR), got {cfg.forget_percent!r}")


@dataclass
class RunConfig:
    name: str = "default"
    family: str = "llava"
    model: str | None = None  # a local checkpoint already holding the knowledge (skips injection)
    benchmark: str | None = None  # an MLLMU-Bench or CLEAR directory, or "clear"; default: the built-in world
    clear_tofu: bool = False  # CLEAR: train on the ``+tofu`` configs (captions + TOFU text QA)
    gold_model: str | None = None  # CLEAR: a checkpoint fine-tuned on the retain split (else trained here)
    forget_percent: int = 10
    method: str = DEFAULT_METHOD  # methods.defaults: chosen from the validation sweeps
    # A saved edit (a run's ``edit`` folder) or an unlearned checkpoint of ``model``: evaluated
    # (and attacked) in place of unlearning, so ``method``/``method_cfg`` are not used.
    edit: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto: the checkpoint's own (models.base.checkpoint_dtype); float32, bfloat16, float16
    max_pixels: int | None = None  # Qwen families: cap on each image's pixels (default: the checkpoint's own)
    runs_dir: str = "runs"
    cache_dir: str = ".cache/mllm_unlearn"
    world: WorldConfig = field(default_factory=WorldConfig)
    size: TinySize = field(default_factory=TinySize)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    # The method's settings as given; None: the preset for the model (``tiny`` for a model this
    # tool built, ``paper`` otherwise; methods.defaults), with ``method_overrides`` on top.
    method_cfg: MethodConfig | None = field(default_factory=MethodConfig)
    method_overrides: dict[str, Any] = field(default_factory=dict)  # MethodConfig fields; "extra" merged
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Robustness evaluations (None switches one off): membership inference before and after
    # unlearning, and the relearning attack on the unlearned model (its lora "auto" and lr None
    # resolve by who built the model: eval.relearn.resolve_relearn).
    mia: MIAConfig | None = field(default_factory=MIAConfig)
    relearn: RelearnConfig | None = field(default_factory=RelearnConfig)
    # The attack battery and forgetting certificate (eval/attacks; None: off, ``--attacks none``).
    attacks: AttackConfig | None = field(default_factory=AttackConfig)
    progress: bool = True
    # Start from the vanilla model shipped with the package when its key is this run's and the cache
    # lacks it (shipped.py: the default run's, trained by this code; False: train it here).
    shipped_vanilla: bool = True
    # A preset file's content (``sweep.load_preset``): recorded in results.json; a preset chosen on
    # a carved-out validation split takes those people out of the reported splits.
    preset: dict[str, Any] | None = None
    # Knowledge check before unlearning (eval/knowledge.py): the vanilla model's forget-split
    # classification accuracy must beat chance significantly (binomial) and by ``min_knowledge`` points in every modality the
    # method targets, else the run stops; ``allow_unknown`` goes on (and the report says so).
    min_knowledge: float = DEFAULT_MIN_KNOWLEDGE
    allow_unknown: bool = False
    # Read the vanilla model's figures from the evaluation cache (``cache_dir``/eval, eval/cache.py)
    # when an earlier job measured the same model, items and settings; False (``--no-eval-cache``)
    # recomputes them (and rewrites the cache).
    eval_cache: bool = True

    def __post_init__(self) -> None:
        check_dtype_and_forget_percent(self)
        if not self.min_knowledge >= 0:
            raise ValueError(f"RunConfig.min_knowledge must be >= 0 points above chance, got {self.min_knowledge}")
