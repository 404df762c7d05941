"""What the benchmark scripts share: the model and benchmark arguments, and how they resolve.

Without --model / --benchmark a script uses what `make run` cached (the built-in world and the
default vanilla LLaVA under --cache-dir); a missing cache is one clear message, not a traceback.
"""
from __future__ import annotations

import argparse

import torch


def add_model_arguments(parser: argparse.ArgumentParser, *, benchmark: bool = True, placement: bool = True) -> None:
    """--model, --cache-dir, and optionally --benchmark and --device/--dtype/--threads."""
    parser.add_argument("--model", help="checkpoint (default: the default run's cached vanilla LLaVA)")
    if benchmark:
        parser.add_argument("--benchmark", help="MLLMU-Bench directory (default: the cached built-in world)")
    parser.add_argument("--cache-dir", default=".cache/mllm_unlearn", help="cache of `make run` (default model, world)")
    if placement:
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
        parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")


def resolve_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """``(benchmark directory, model path)``: as given, else the default run's cached ones."""
    from mllm_unlearn.jobs.prepare import resolve_default_inputs

    try:
        return resolve_default_inputs(args.model, getattr(args, "benchmark", None), args.cache_dir)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def load_model(args: argparse.Namespace, model: str):  # -> mllm_unlearn.models.VLM
    """The model on --device in --dtype, with --threads CPU threads; bad values end with their message."""
    from mllm_unlearn.models import load_vlm

    torch.set_num_threads(getattr(args, "threads", 2))
    try:
        return load_vlm(model, device=getattr(args, "device", "auto"), dtype=getattr(args, "dtype", "float32"))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
