"""The options several commands share, declared once as typer ``Annotated`` types.

A command's signature says ``device: Device = RunConfig.device``: the type carries the option's
name, flags and help, the default comes from the config dataclass the option fills (so the CLI and
the Python API cannot drift apart). Value checks live in the dataclasses' ``__post_init__``; their
errors name the field (``InjectionConfig.lr must be ...``) and ``option_message`` names the option
that set it (``--inject-lr must be ... (InjectionConfig.lr)``). Help texts that state a default or a
set of values derive it from the code that holds it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from ..data.layouts import CLEAR_FORGET_PERCENTS
from ..data.layouts import MLLMU_FORGET_PERCENTS as FORGET_PERCENTS
from ..data.mllmu_protocol import MAX_NEW_TOKENS
from ..eval.attacks import ATTACK_ORDER, AttackConfig
from ..eval.clear import ClearEvalConfig
from ..eval.evaluator import TASKS
from ..methods.defaults import DEFAULT_METHOD
from ..models import ADAPTERS
from ..recipes.inject import InjectionConfig
from ..utils import DTYPES


def one_of(values: Sequence[object]) -> str:
    """``5, 10 or 15``."""
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def number(value: float) -> str:
    """A default as the help texts write it: 3e-4, 1e-3, 0.95."""
    if not 0 < abs(value) < 1e-2:
        return f"{value:g}"
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


INJECTION = "Knowledge injection (run; finetune --recipe builtin)"

# --- the model and where it runs --------------------------------------------------------------
Model = Annotated[Optional[Path], typer.Option(
    help="Local checkpoint of a supported family already holding the knowledge (skips knowledge injection).")]
Family = Annotated[str, typer.Option(
    help=f"Without --model: the tiny model family to build ({one_of(sorted(ADAPTERS))}).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[str, typer.Option(
    help=f"auto (the checkpoint's own dtype from its config.json, float32 for models this tool built; a float16 "
         f"checkpoint loads as bfloat16, except in export, which keeps it), {one_of(list(DTYPES))}. bfloat16 weights "
         "train as fp32 master weights with a bf16 forward; float16 training is refused.")]
MaxPixels = Annotated[Optional[int], typer.Option(
    help="Qwen2-VL / Qwen2.5-VL: cap on each image's pixels (the processor's max_pixels; default: the checkpoint's "
         "own, 12845056 for the 7B Instruct models). Fewer pixels, fewer image tokens, less memory. Refused for LLaVA, "
         "whose images have one fixed size.")]
Seed = Annotated[int, typer.Option(
    help="Seed for everything (the built-in world, the forget split, training, sampling): the same seed gives the "
         "same results.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars or progress lines.")]

# --- the benchmark -------------------------------------------------------------------------------
Benchmark = Annotated[Optional[str], typer.Option(
    help="'clear' (the built-in world in CLEAR's layout), or a directory in MLLMU-Bench's or CLEAR's layout "
         "(detected); default: the built-in world in MLLMU-Bench's layout. sweep and sequence take MLLMU-Bench's "
         "layout only.")]
Forget = Annotated[int, typer.Option(
    help=f"Forget split percentage: {one_of(FORGET_PERCENTS)} (MLLMU-Bench); {one_of(CLEAR_FORGET_PERCENTS)} (CLEAR).")]
Tofu = Annotated[bool, typer.Option(help="CLEAR: train on the +tofu configs (captions + TOFU text QA).")]
People = Annotated[int, typer.Option(help="Fictitious people in the built-in world.")]
RealPeople = Annotated[int, typer.Option(help="Real-world people in the built-in world.")]

# --- where things go -----------------------------------------------------------------------------
Name = Annotated[str, typer.Option(
    help="Run name, one folder name (no '/'): results go to RUNS_DIR/NAME/, which a rerun replaces as one unit when "
         "it ends (docs/reports.md#the-run-folder).")]
RunsDir = Annotated[Path, typer.Option(help="Where run folders are written (sweep: its default output folder).")]
CacheDir = Annotated[Path, typer.Option(help="Cache of generated benchmarks and vanilla models.")]
ShippedVanilla = Annotated[bool, typer.Option(
    "--shipped-vanilla/--no-shipped-vanilla",
    help="Start from the vanilla model shipped with mllm-unlearn when it is the one this run would train (the "
         "default world and recipe) and the cache lacks it; --no-shipped-vanilla trains it here (~6 min on 2 cores).")]

# --- unlearning ----------------------------------------------------------------------------------
Method = Annotated[Optional[str], typer.Option(
    help=f"Unlearning method name (default {DEFAULT_METHOD}, chosen from the validation sweeps (methods/defaults.py), "
         "or the preset's).")]
Preset = Annotated[Optional[Path], typer.Option(
    help="A preset file (e.g. the preset.json `mllm-unlearn sweep` writes): its values override the method's "
         "defaults; options given here override the preset. Recorded in results.json.")]
Lr = Annotated[Optional[float], typer.Option(help="Unlearning learning rate (method default if unset).")]
Epochs = Annotated[Optional[int], typer.Option(
    help="Unlearning epochs over the forget items (method default if unset; sequence: each request's).")]
MaxSteps = Annotated[Optional[int], typer.Option(
    help="Stop unlearning after this many steps (sequence: each request's).")]
BatchSize = Annotated[Optional[int], typer.Option(
    help="Unlearning batch size per process (method default if unset; sweep: every trial's, where the search space "
         "does not search it).")]
MethodOption = Annotated[list[str], typer.Option(
    "--option", "-o", help="Method-specific option KEY=VALUE, repeatable (e.g. -o beta=0.2 for npo; sweep: every "
                           "trial uses it, where the search space does not search it).")]
Shard = Annotated[Optional[str], typer.Option(
    help="'fsdp': full fine-tuning sharded over the processes of `accelerate launch`/torchrun with FSDP2, each process "
         "holding 1/N of every weight (also chosen by `accelerate launch --use_fsdp`; finetune: with --full).")]
GradientCheckpointing = Annotated[Optional[bool], typer.Option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    help="Recompute activations in the backward pass (less memory, one more forward per step); default: run: on for "
         "a --model this tool did not build, off for its tiny models; finetune: off.")]

# --- evaluation ----------------------------------------------------------------------------------
Tasks = Annotated[str, typer.Option(
    help=f"Comma-separated tasks to evaluate, of {', '.join(TASKS)} (CLEAR: 'generation' switches ROUGE on; sequence: "
         "after each request).")]
MaxNewTokens = Annotated[Optional[int], typer.Option(
    help=f"Greedy generation length (default: the benchmark's own, {MAX_NEW_TOKENS} on MLLMU-Bench, "
         f"{ClearEvalConfig.max_new_tokens} on CLEAR).")]
EvalCache = Annotated[bool, typer.Option(
    "--eval-cache/--no-eval-cache",
    help="Read the vanilla model's figures from the evaluation cache (CACHE_DIR/eval) when an earlier job measured "
         "the same model (by content), items and settings; --no-eval-cache recomputes them and rewrites the cache.")]

# --- knowledge injection (the vanilla model of the built-in world) ------------------------------
InjectEpochs = Annotated[Optional[int], typer.Option(
    help=f"{INJECTION}: epoch cap on the benchmark people (default {InjectionConfig.finetune_epochs}; a stage ends "
         "earlier once its knowledge is learned).")]
PretrainEpochs = Annotated[Optional[int], typer.Option(
    help=f"{INJECTION}: epoch cap on the real-world people (default {InjectionConfig.pretrain_epochs}).")]
InjectLr = Annotated[Optional[float], typer.Option(
    help=f"{INJECTION}: learning rate (default {number(InjectionConfig.lr)}; 1e-3 took twice the steps to learn less: "
         "docs/knowledge-injection.md#injection-time). Another value is another vanilla model.")]
InjectTarget = Annotated[Optional[float], typer.Option(
    help=f"{INJECTION}: a stage ends once this share of its probe is answered exactly (default "
         f"{number(InjectionConfig.learned_target)}).")]

# --- attacks -------------------------------------------------------------------------------------
Attacks = Annotated[str, typer.Option(
    help="Attack battery and forgetting certificate (certificate.json): 'all', 'none', or a comma list of "
         f"{', '.join(ATTACK_ORDER)}.")]
QuantGroupSize = Annotated[int, typer.Option(help="Quantization attack: weights per group of each output row.")]
CertificateMargin = Annotated[float, typer.Option(
    help=f"Certificate: a probe still recalls a person above chance + this many points (and p <= "
         f"{number(AttackConfig.alpha)}).")]

# The option that sets each checked dataclass field, where an option does (in every command that
# has it): ``option_message`` names it in the field's error.
FIELD_OPTIONS = {
    "RunConfig.forget_percent": "--forget", "RunConfig.dtype": "--dtype", "RunConfig.min_knowledge": "--min-knowledge",
    "FinetuneJob.forget_percent": "--forget", "FinetuneJob.dtype": "--dtype",
    "WorldConfig.fictitious": "--people", "WorldConfig.real_world": "--real-people",
    "InjectionConfig.lr": "--inject-lr", "InjectionConfig.learned_target": "--inject-target",
    "InjectionConfig.qa_task_forms": "--task-formats",
    "EvalConfig.protocol": "--protocol", "EvalConfig.scorer": "--scorer", "EvalConfig.tasks": "--tasks",
    "EvalConfig.few_shot": "--few-shot", "EvalConfig.max_new_tokens": "--max-new-tokens",
    "RelearnConfig.steps": "--relearn-steps", "RelearnConfig.lr": "--relearn-lr",
    "AttackConfig.quant_group_size": "--quant-group-size", "AttackConfig.margin": "--certificate-margin",
    "FinetuneConfig.save_every": "--save-every", "FinetuneConfig.stop_after": "--stop-after",
    "SweepConfig.trials": "--trials", "SweepConfig.min_retention": "--min-retention",
    "SequenceConfig.retain_items": "--retain-items", "SequenceConfig.real_world_items": "--real-world-items",
    "MethodConfig.lr": "--lr", "MethodConfig.epochs": "--epochs", "MethodConfig.max_steps": "--max-steps",
    "MethodConfig.batch_size": "--batch-size", "MethodConfig.max_batch_tokens": "--max-batch-tokens",
    "FinetuneConfig.lr": "--lr", "FinetuneConfig.epochs": "--epochs", "FinetuneConfig.max_steps": "--max-steps",
    "FinetuneConfig.batch_size": "--batch-size",
}
_FIELD_ERROR = re.compile(r"([A-Z]\w*\.\w+) (.*)", re.DOTALL)


def option_message(error: BaseException) -> str:
    """A dataclass's ``Class.field must ...`` error as the CLI says it: ``--option must ... (Class.field)``."""
    text = str(error)
    match = _FIELD_ERROR.fullmatch(text)
    if match is None or match[1] not in FIELD_OPTIONS:
        return text
    return f"{FIELD_OPTIONS[match[1]]} {match[2]} ({match[1]})"
