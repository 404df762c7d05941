"""Sharded full fine-tuning with torch's FSDP2 (``fully_shard``) across the processes of a job.

Started by ``accelerate launch --multi_gpu --num_processes N`` (or torchrun) with ``--shard fsdp``,
or by ``accelerate launch --use_fsdp`` (accelerate's FSDP config is claimed here: its own plugin
refuses CPUs and would wrap the model itself). One code path for CPU (gloo) and GPU (NCCL).

How a sharded run trains, and why:
- The caller's model is never trained or sharded. FSDP2 has no official way back from a sharded
  module, so the loop trains a *copy* whose parameters are built on the meta device (no memory),
  sharded with ``fully_shard`` (the adapter's blocks: decoder layers, vision blocks; then the
  root), and only then materialised: each process allocates and fills just its 1/N slice of
  every weight (dim 0), taken from the caller's model. Parameter names are unchanged.
- Gradients, optimizer states (one per phase, so MMUnlearner's phases keep separate AdamW
  states) and clipping work on the local slices; masks are cut to the same slices
  (``local_part``).
- At the end each trained tensor is gathered (``DTensor.full_tensor``, an all-gather: every process
  gets the same full values, one tensor at a time) and written into the caller's model, so
  ``train`` keeps its in-place contract and the edit is read off the caller's model as before.
  The caller then restores its own snapshot as usual.
- Precision as unsharded (``loop.compute_dtype_for``): a bf16 model trains as fp32 master weights
  (the copy's trainable slices are fp32; FSDP2's ``MixedPrecisionPolicy`` gathers them as bf16
  for compute and reduces gradients in fp32); the gathered fp32 values are the run's
  ``TrainResult.master_weights``, the caller's bf16 weights get their rounding. float16 is refused.
- While the copy trains, the caller's model is untouched: it serves as the frozen reference of
  KL and RMU/RMisU (``frozen_copy`` and ``Misdirection.start`` use it instead of a copy).

DeepSpeed is refused (``refuse_deepspeed``): it is not installed here and, through accelerate,
it merges MMUnlearner's two phase optimizers and steps before the gradient masks.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

SHARD_MODES = ("fsdp",)
_ACCELERATE_FSDP = "ACCELERATE_USE_FSDP"
_sharded_training = False  # True while a GradientMethod prepares and trains a sharded run
_claimed_fsdp = False  # accelerate's FSDP flag was taken over in this process


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_shard_option(shard: str | None) -> None:
    if shard is not None and shard not in SHARD_MODES:
        raise ValueError(f"--shard must be one of {', '.join(SHARD_MODES)} (or unset), got {shard!r}")


def claim_accelerate_fsdp(shard: str | None) -> str | None:
    """``shard``, or ``"fsdp"`` when ``accelerate launch --use_fsdp`` (or its config) asked for FSDP.

    Accelerate's FSDP flag is then switched off for this process: sharding is done here with
    FSDP2, and accelerate's own plugin would take the model over (and refuses to start on CPUs)."""
    global _claimed_fsdp
    check_shard_option(shard)
    if os.environ.get(_ACCELERATE_FSDP, "false").lower() == "true":
        os.environ[_ACCELERATE_FSDP] = "false"
        _claimed_fsdp = True  # remembered for later calls in this process
    return shard or ("fsdp" if _claimed_fsdp else None)


def refuse_deepspeed(what: str) -> None:
    """A clear error when the job was launched with DeepSpeed (``accelerate launch --use_deepspeed``)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
    raise ValueError(f"{what}: DeepSpeed ZeRO-{stage} is not supported (through accelerate it merges phase "
                     "optimizers, steps before gradient masks and shards parameters this tool reads by name); "
                     "launch without --use_deepspeed and shard with FSDP2 instead: "
                     "accelerate launch --multi_gpu --num_processes N -m mllm_unlearn run ... --shard fsdp")


def sharding_active(shard: str | None) -> bool:
    """Shard only when asked and the job really runs in several processes."""
    return shard == "fsdp" and world_size() > 1


@contextmanager
def sharded_training(active: bool) -> Iterator[None]:
    """Marks a method's prepare + train as sharded (``frozen_copy`` then shares the caller's model)."""
    global _sharded_training
    previous, _sharded_training = _sharded_training, active
    try:
        yield
    finally:
        _sharded_training = previous


def in_sharded_training() -> bool:
    return _sharded_training


def _device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size(),))


def build_sharded_copy(model: nn.Module, units: Sequence[nn.Module], trainable: Callable[[str, nn.Parameter], bool],
                       device: torch.device, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` sharded over the processes with ``fully_shard``: ``units`` (modules of
    ``model``, each its own FSDP group) then the root. No process ever holds the full copy: its
    parameters start on the meta device and each process materialises only its slice.
    ``trainable(name, param)`` sets ``requires_grad`` of the copy's parameters.

    ``compute_dtype`` (bf16 from ``loop.compute_dtype_for``): mixed precision as in the unsharded
    loop. The copy's trainable parameters are fp32 master weights (fp32 AdamW state); FSDP2's
    ``MixedPrecisionPolicy`` gathers every parameter as bf16 for forward and backward and
    reduce-scatters the gradients in fp32. Frozen parameters keep the caller's dtype: FSDP2
    requires one dtype among the *trainable* parameters of a group only (``_init_mp_dtypes``),
    which all being fp32 satisfies."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor

    if compute_dtype is not None and compute_dtype != torch.bfloat16:
        raise ValueError(f"sharding: mixed precision computes in bfloat16 only, got {compute_dtype}")
    master = torch.float32 if compute_dtype is not None else None
    names = {id(p): n for n, p in model.named_parameters()}
    memo: dict[int, object] = {}
    for param in model.parameters():
        dtype = master if master is not None and trainable(names[id(param)], param) else param.dtype
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta", dtype=dtype),
                                       requires_grad=param.requires_grad)
    # Shared (tied) parameters stay shared: one memo entry each. Forward hooks are copied too
    # (transformers' output capturing needs them).
    shell = copy.deepcopy(model, memo)
    for name, param in shell.named_parameters():
        param.requires_grad_(trainable(name, param))
    paths = {id(m): n for n, m in model.named_modules()}
    missing = [u for u in units if id(u) not in paths]
    if missing:
        raise ValueError("sharding: a shard unit is not a module of the model being trained")
    groups = [shell.get_submodule(paths[id(u)]) for u in units] + [shell]
    _check_uniform_dtypes(shell)
    mesh = _device_mesh(device)
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype is not None else MixedPrecisionPolicy()
    for group in groups:
        fully_shard(group, mesh=mesh, mp_policy=policy)
    _touch_root_parameters(shell, [paths[id(u)] for u in units])
    originals = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    shell.to_empty(device=device)
    with torch.no_grad():
        for name, param in shell.named_parameters():
            local = param.to_local() if isinstance(param, DTensor) else param
            full = originals[name].detach().to(local.dtype)  # bf16 -> fp32 master is exact
            if isinstance(param, DTensor):
                full = distribute_tensor(full.to(device), param.device_mesh, param.placements,
                                         src_data_rank=None).to_local()
            local.copy_(full)
        for name, buffer in shell.named_buffers():  # to_empty left them uninitialised
            buffer.copy_(buffers[name])
    return shell


def _touch_root_parameters(shell: nn.Module, unit_paths: list[str]) -> None:
    """Give every trainable parameter of the root group a gradient on every process.

    A step whose batch holds no image skips the vision tower (in the root group) on that process
    only; its parameters then have no gradient there, and FSDP2's root reduce-scatter, which
    covers the parameters that have one, differs in size between processes (gloo aborts). Adding
    0 x their sum to the output's logits (root parameters are still unsharded after the root's
    forward) makes the gradient an exact zero where the tower did not run."""
    prefixes = tuple(f"{p}." for p in unit_paths)
    names = {n for n, p in shell.named_parameters() if p.requires_grad and not n.startswith(prefixes)}
    if not names:
        return

    def touch(module: nn.Module, args: Any, output: Any) -> Any:
        logits = getattr(output, "logits", None)
        if logits is None or not torch.is_grad_enabled():
            return output
        params = [p for n, p in module.named_parameters() if n in names]
        zero = torch.stack([p.sum().float() for p in params]).sum() * 0.0
        output.logits = logits + zero.to(logits.dtype)
        return output

    shell.register_forward_hook(touch)


def _check_uniform_dtypes(model: nn.Module) -> None:
    """FSDP2 asserts one dtype among the trainable parameters of each group; checked here for
    the whole copy (stricter, and simple) so that a mixed model gets a clear error instead."""
    first: dict[torch.dtype, str] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            first.setdefault(param.dtype, name)
    if len(first) > 1:
        found = ", ".join(f"{name}: {dtype}" for dtype, name in first.items())
        raise ValueError(f"sharding: the trained parameters have different dtypes ({found}); FSDP2 needs one "
                         "per group: load the model in one dtype (--dtype)")


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The slice of ``full`` (a full-size tensor: a mask, an original value) that this process
    holds of parameter ``like``; ``full`` itself when ``like`` is not sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    part = distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()
    assert part.shape == like.to_local().shape, (tuple(part.shape), tuple(like.to_local().shape))
    return part


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a (possibly sharded) parameter or gradient, writable in place."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@torch.no_grad()
def write_back(sharded: nn.Module, target: nn.Module, names: set[str] | None = None,
               masters: dict[str, torch.Tensor] | None = None) -> None:
    """Gather each parameter of ``sharded`` (all processes, same order) into ``target``'s
    parameter of the same name; only ``names`` when given (the ones that trained). Where the
    gathered value is fp32 and the target lower precision (mixed precision's master weights),
    ``masters[name]`` gets the fp32 value (on CPU), the target its rounding."""
    from torch.distributed.tensor import DTensor

    targets = dict(target.named_parameters())
    for name, param in sharded.named_parameters():
        if names is not None and name not in names:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param.detach()
        if masters is not None and full.dtype != targets[name].dtype:
            masters[name] = full.to("cpu", copy=True)
        targets[name].copy_(full.to(targets[name].device))
        del full


def local_numel(model: nn.Module) -> dict[str, tuple[int, int]]:
    """name -> (elements this process holds, elements of the full tensor): what sharding saves."""
    from torch.distributed.tensor import DTensor

    return {name: ((p.to_local().numel() if isinstance(p, DTensor) else p.numel()), p.numel())
            for name, p in model.named_parameters()}
