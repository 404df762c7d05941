"""The one training loop every gradient-based step uses (knowledge injection and unlearning).

Built on accelerate: ``accelerate launch`` with several processes gives DDP (the model replicated,
gradients averaged); ``TrainConfig.shard = "fsdp"`` shards the trained model over those processes
with FSDP2 instead (``training/sharding.py``). DeepSpeed is refused.
"""
from __future__ import annotations

import gc
import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..utils import process_rank_and_count, seed_everything

T = TypeVar("T")


@dataclass
class LoraOptions:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    # Regex over module names; default: every linear layer of the language model.
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class TrainConfig:
    lr: float = 1e-3
    epochs: int = 1
    samples_per_epoch: int | None = None  # draw this many examples per epoch (with fresh randomness)
    max_steps: int | None = None
    batch_size: int = 16
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    lora: LoraOptions | None = None
    progress: bool = True
    # "fsdp": shard the trained model over the processes with FSDP2 (``training/sharding.py``);
    # only with several processes (``accelerate launch``/torchrun), full fine-tuning only.
    shard: str | None = None
    # Recompute each transformer block's activations in the backward pass instead of keeping
    # them (non-reentrant torch.utils.checkpoint): activation memory ~ one block instead of all.
    gradient_checkpointing: bool = False
    # Micro-batches per optimizer step (their losses averaged): the effective batch is
    # batch_size x grad_accumulation per process. A "step" (max_steps, schedule, checks) is an
    # optimizer step.
    grad_accumulation: int = 1
    # Warmup as a number of epochs' steps (CLEAR: one epoch); None: ``warmup_ratio`` of all steps.
    warmup_epochs: float | None = None
    # Resumable training (``save_every`` steps, into ``checkpoint_dir``; ``resume`` continues from
    # the checkpoint there): model, optimizers, schedulers and RNG via accelerate's save_state,
    # plus the data position. ``stop_after``: save a checkpoint after this many steps in all and
    # raise ``TrainingPaused`` (a time-sliced job; the next call with ``resume`` continues).
    save_every: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    stop_after: int | None = None
    # torch's fused AdamW kernel: the same update rule in one kernel over all parameters. Many
    # small tensors (a tiny model) spend most of the optimizer step in per-tensor dispatch: on a
    # CPU the fused step of the 0.95M-parameter tiny model is ~2.5x faster. Refused with ``shard``.
    fused_optimizer: bool = False
    # Every process draws the same (global) batches and its collate keeps the process's share
    # (``batch_share``): N processes train exactly the batches one process would, in the same
    # number of steps, so the recipe does not change with N (the default shares whole batches
    # out: N processes take N batches per step). Not with ``shard``.
    shared_batches: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    phase_losses: dict[str, list[float]] = field(default_factory=dict)
    # Mixed precision: the fp32 master value (on CPU) of every trained parameter stored in bf16,
    # by name. The model itself is handed back in its own dtype; an edit should read these.
    master_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    # LoRA with ``merge_lora=False``: the trained adapters as read from peft (see ``lora_factors``).
    lora_factors: dict[str, dict[str, Any]] | None = None


# --- precision -------------------------------------------------------------------------------
def compute_dtype_for(trainable: dict[str, torch.nn.Parameter], description: str = "training",
                      model: torch.nn.Module | None = None) -> torch.dtype | None:
    """The dtype the forward should compute in under mixed precision, or None to train as stored.

    bf16 weights train as fp32 master weights (and fp32 AdamW state) with a bf16 forward:
    pure-bf16 AdamW rounds away updates below bf16's resolution (~0.4% of a weight: at lr 1e-5
    most of them). float16 is refused: its range overflows in the loss and AdamW's eps (1e-8)
    rounds to 0 in fp16, so entries with zero gradient (masked ones) become 0/0 = NaN. A float16
    ``model`` is refused even when only fp32 adapters train (its forward and backward overflow alike).
    """
    dtypes = {p.dtype for p in trainable.values()} | ({p.dtype for p in model.parameters()} if model is not None else set())
    if torch.float16 in dtypes:
        raise ValueError(f"{description}: float16 training is not supported (overflow, and NaN in AdamW for entries "
                         "with zero gradient): load the model with --dtype bfloat16 (trained as fp32 master weights "
                         "with bf16 compute), --dtype float32 or --dtype auto")
    return torch.bfloat16 if any(p.dtype == torch.bfloat16 for p in trainable.values()) else None


@contextmanager
def fp32_master_weights(trainable: dict[str, torch.nn.Parameter]) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, every bf16 parameter of ``trainable`` holds an fp32 copy of itself (the
    master weight the optimizer updates); on exit each goes back to bf16 and the yielded dict
    is filled with its final fp32 value (moved to CPU), by name. Create optimizers inside."""
    low = {name: p for name, p in trainable.items() if p.dtype == torch.bfloat16}
    masters: dict[str, torch.Tensor] = {}
    for p in low.values():
        p.data = p.data.float()
    try:
        yield masters
    finally:
        for name, p in low.items():
            masters[name] = p.data.detach().to("cpu")
            p.data = p.data.to(torch.bfloat16)


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> ContextManager[Any]:
    """The forward's autocast for mixed precision (a no-op when ``dtype`` is None)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


class ListDataset(Dataset):
    def __init__(self, examples: Sequence[Any]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Any:
        return self.examples[index]


class TrainingPaused(RuntimeError):
    """Training stopped at ``TrainConfig.stop_after`` steps, its state saved for ``resume``."""

    def __init__(self, message: str, result: "TrainResult"):
        super().__init__(message)
        self.result = result


CHECKPOINT_POSITION = "position.json"  # the data position beside accelerate's state: marks a finished checkpoint


def batch_share(items: Sequence[T]) -> tuple[list[T], float]:
    """This process's share of a global batch under ``TrainConfig.shared_batches``, and the factor
    its mean loss takes so that the processes' averaged gradients are the global batch's mean:
    contiguous chunks, as equal as possible. A process left without an item gets the first one at
    factor 0 (it still takes part in the gradient averaging). One process: everything, factor 1."""
    rank, count = process_rank_and_count()
    if count == 1:
        return list(items), 1.0
    bounds = [len(items) * r // count for r in range(count + 1)]
    share = list(items[bounds[rank]:bounds[rank + 1]])
    if not share:
        return list(items[:1]), 0.0
    return share, len(share) * count / len(items)


def _lr_lambda(cfg: TrainConfig, total: int, steps_per_epoch: int | None = None) -> Callable[[int], float]:
    warmup = int(total * cfg.warmup_ratio) if cfg.warmup_epochs is None or steps_per_epoch is None \
        else round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    if cfg.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"schedule must be cosine, linear or constant, got {cfg.schedule!r}")
    return factor


def train(
    model: torch.nn.Module,
    examples: Sequence[Any],
    collate_fn: Callable[[list[Any]], Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    cfg: TrainConfig,
    parameters: Callable[[str, torch.nn.Parameter], bool] | None = None,
    description: str = "training",
    device: torch.device | None = None,
    stop_check: Callable[[int], bool] | None = None,
    check_every: int = 100,
    phases: Sequence[str] = (),
    grad_hook: Callable[[str], None] | None = None,
    grad_filter: Callable[[str], None] | None = None,
    on_model: Callable[[torch.nn.Module], None] | None = None,
    shard_units: Callable[[torch.nn.Module], Sequence[torch.nn.Module]] | None = None,
    merge_lora: bool = True,
    on_epoch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Optimise ``loss_fn`` over ``examples`` in place on ``model``.

    ``stop_check(step)``, called every ``check_every`` steps (model in eval mode), ends
    training early when it returns True. ``parameters(name, param)`` selects what is trained (default: everything). With
    ``cfg.lora`` the model is wrapped with peft, trained, and the adapters merged back,
    so callers always get a plain model.

    ``phases`` (e.g. ``("forget", "retain")``) makes every step a sequence of optimizer steps,
    one per phase, each with its **own** AdamW state: ``loss_fn(model, batch, phase)`` gives
    the phase's loss and ``grad_hook(phase)`` may edit gradients before the update. Separate
    states keep one phase's momentum from moving weights another phase masked out.

    ``on_epoch(epoch)`` is called before each pass over ``examples`` draws its first batch (the
    retain pairing of ``methods.base`` follows the epoch, not a per-process count).

    Precision (``compute_dtype_for``): trainable bf16 weights train as fp32 master weights with a
    bf16 autocast forward, their fp32 results in ``TrainResult.master_weights``; float16 is refused.
    peft keeps LoRA adapters in fp32. With ``merge_lora=False`` the adapters are read into
    ``TrainResult.lora_factors`` and removed without touching the base weights.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from . import sharding

    if not examples:
        raise ValueError(f"{description}: no training examples")
    sharding.refuse_deepspeed(description)
    # accelerate's own FSDP plugin stays out either way; only callers that ask (unlearning methods,
    # which also follow `accelerate launch --use_fsdp`) shard; knowledge injection stays DDP.
    sharding.claim_accelerate_fsdp(cfg.shard)
    shard = sharding.sharding_active(cfg.shard)
    if shard and cfg.lora is not None:
        raise ValueError(f"{description}: --shard fsdp is for full fine-tuning; LoRA runs fit one GPU, "
                         "launch them without --shard")
    if shard and cfg.shared_batches:
        raise ValueError(f"{description}: shared_batches is not supported with --shard fsdp")
    if shard and cfg.fused_optimizer:
        raise ValueError(f"{description}: fused_optimizer is not supported with --shard fsdp (sharded DTensor "
                         "parameters); train with the default AdamW kernel")
    if cfg.grad_accumulation < 1:
        raise ValueError(f"{description}: grad_accumulation must be >= 1, got {cfg.grad_accumulation}")
    if cfg.grad_accumulation > 1 and phases:
        raise ValueError(f"{description}: gradient accumulation is not supported with several optimizer phases")
    resumable = cfg.save_every is not None or cfg.resume or cfg.stop_after is not None
    if resumable and not cfg.checkpoint_dir:
        raise ValueError(f"{description}: save_every, resume and stop_after need a checkpoint_dir")
    if resumable and shard:
        raise ValueError(f"{description}: resumable checkpoints (--save-every/--resume) are not supported with "
                         "--shard fsdp yet; train without --shard or without checkpoints")
    if cfg.save_every is not None and cfg.save_every < 1:
        raise ValueError(f"{description}: save_every must be >= 1, got {cfg.save_every}")
    if shard and stop_check is not None:
        raise ValueError(f"{description}: early stopping checks the caller's model, which a sharded run "
                         "only updates at the end; train without --shard")
    seed_everything(cfg.seed)
    device = device or next(model.parameters()).device
    # A text-only batch leaves the vision tower unused: DDP must not wait for its gradients.
    # Our schedule already counts per-process steps: accelerate must step it once per step,
    # not once per process (its default), or N processes would run the schedule N times faster.
    accelerator = Accelerator(cpu=device.type == "cpu", step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    base_model = model
    had_input_grad_hooks = bool(getattr(base_model, "_require_grads_hooks", None))
    if cfg.lora is not None:
        model = _wrap_lora(model, cfg.lora)
    selected: dict[str, torch.nn.Parameter] = {}
    for name, param in model.named_parameters():
        wanted = (param.requires_grad if cfg.lora is not None else True) and (parameters is None or parameters(name, param))
        param.requires_grad_(wanted)
        if wanted:
            selected[name] = param
    if not selected:
        raise ValueError(f"{description}: no parameter selected for training")
    try:
        compute_dtype = compute_dtype_for(selected, description, model)
    except ValueError:
        _hand_back(model, base_model, cfg, merge_lora, TrainResult(), had_input_grad_hooks=had_input_grad_hooks)
        raise
    result = TrainResult()
    compute = lambda: autocast_to(device, compute_dtype)  # noqa: E731
    hooks = {"grad_filter": grad_filter, "on_model": on_model, "on_epoch": on_epoch}
    try:
        if shard:
            _train_sharded(model, base_model, examples, collate_fn, loss_fn, cfg, selected, description, phases,
                           grad_hook, accelerator, compute, compute_dtype, device, shard_units, result, hooks)
        else:
            with fp32_master_weights(selected) as result.master_weights:
                try:
                    _train_steps(model, base_model, examples, collate_fn, loss_fn, cfg, list(selected.values()),
                                 description, stop_check, check_every, phases, grad_hook, accelerator, compute,
                                 result, **hooks)
                finally:  # also on errors
                    _hand_back(model, base_model, cfg, merge_lora, result, accelerator, had_input_grad_hooks)
    except FloatingPointError as error:
        error.train_result = result  # type: ignore[attr-defined]  # the last finite step's weights/factors
        raise
    return result


def _train_sharded(model: torch.nn.Module, base_model: torch.nn.Module, examples: Sequence[Any],
                   collate_fn: Callable[[list[Any]], Any], loss_fn: Callable[..., torch.Tensor], cfg: TrainConfig,
                   selected: dict[str, torch.nn.Parameter], description: str, phases: Sequence[str],
                   grad_hook: Callable[[str], None] | None, accelerator: Any, compute: Callable[[], ContextManager[Any]],
                   compute_dtype: torch.dtype | None, device: torch.device,
                   shard_units: Callable[[torch.nn.Module], Sequence[torch.nn.Module]] | None, result: TrainResult,
                   hooks: dict[str, Any]) -> None:
    """``--shard fsdp``: train a sharded copy of ``model`` (``training/sharding.py``), then gather
    the trained values back. Mixed precision as unsharded: the copy's trainable slices are fp32
    master weights (fp32 AdamW state, fp32 gradient reduction), FSDP2 gathers them as bf16 for
    the forward; their gathered fp32 values go to ``result.master_weights`` and the caller's bf16
    weights get their rounding, as ``fp32_master_weights`` leaves them."""
    from . import sharding

    try:
        units = list(shard_units(model)) if shard_units is not None else []
        sharded = sharding.build_sharded_copy(model, units, lambda name, _: name in selected, device,
                                              compute_dtype=compute_dtype)
    except Exception:
        _hand_back(model, base_model, cfg, False, result, accelerator)
        raise
    # The caller's model only serves as the frozen reference (KL, RMU) while the copy trains.
    for param in base_model.parameters():
        param.requires_grad_(False)
    trainable = [p for p in sharded.parameters() if p.requires_grad]
    healthy = False
    try:
        _train_steps(sharded, base_model, examples, collate_fn, loss_fn, cfg, trainable, description, None, 0,
                     phases, grad_hook, accelerator, compute, result, shard=True, **hooks)
        healthy = True
    except FloatingPointError:
        healthy = True  # stopped before the bad step: the last good state is gathered back
        raise
    finally:
        try:
            if healthy:  # collective: every process gathers the same values, one tensor at a time
                sharding.write_back(sharded, base_model, set(selected), masters=result.master_weights)
        finally:
            _hand_back(sharded, base_model, cfg, False, result, accelerator)
            # FSDP2's hooks and states hold the copy in reference cycles: collected now, with its
            # DTensors, gradients and the work of its collectives, not at interpreter exit.
            del sharded, trainable
            gc.collect()


def _hand_back(unwrapped: torch.nn.Module, base_model: torch.nn.Module, cfg: TrainConfig, merge_lora: bool,
               result: TrainResult, accelerator: Any = None, had_input_grad_hooks: bool = True) -> None:
    """Eval mode, every parameter trainable again, peft's wrapper gone (adapters merged, or read
    into ``result.lora_factors`` and dropped): callers always get a plain model back."""
    unwrapped.eval()
    for param in base_model.parameters():
        param.requires_grad_(True)
    if not had_input_grad_hooks and hasattr(base_model, "disable_input_require_grads"):
        base_model.disable_input_require_grads()  # added by peft's wrap or checkpointing; not needed after
    if accelerator is not None:
        accelerator.free_memory()
    if cfg.lora is not None:
        if merge_lora:
            merged = unwrapped.merge_and_unload()
        else:
            result.lora_factors = lora_factors(unwrapped)
            merged = unwrapped.unload()
        assert merged is base_model or merged.__class__ is base_model.__class__


def lora_factors(peft_model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The trained LoRA adapters of a peft model, by the base model's module path: fp32 CPU
    copies of ``a`` (r x in) and ``b`` (out x r) with ``scale`` (alpha / r), so that the weight
    change is ``scale * b @ a``."""
    from peft.tuners.lora import LoraLayer

    factors = {}
    prefix = "base_model.model."
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or not module.lora_A:
            continue
        if not isinstance(module.get_base_layer(), torch.nn.Linear):
            raise ValueError(f"LoRA on {name}: only linear layers are supported, got {type(module.get_base_layer()).__name__}")
        (adapter,) = module.lora_A.keys()
        path = name[len(prefix):] if name.startswith(prefix) else name
        factors[path] = {"a": module.lora_A[adapter].weight.detach().float().cpu().clone(),
                         "b": module.lora_B[adapter].weight.detach().float().cpu().clone(),
                         "scale": float(module.scaling[adapter])}
    return factors


def _train_steps(model: torch.nn.Module, base_model: torch.nn.Module, examples: Sequence[Any], collate_fn: Callable[[list[Any]], Any],
                 loss_fn: Callable[..., torch.Tensor], cfg: TrainConfig, trainable: list[torch.nn.Parameter],
                 description: str, stop_check: Callable[[int], bool] | None, check_every: int,
                 phases: Sequence[str], grad_hook: Callable[[str], None] | None, accelerator: Any,
                 compute: Callable[[], ContextManager[Any]], result: TrainResult, shard: bool = False,
                 grad_filter: Callable[[str], None] | None = None,
                 on_model: Callable[[torch.nn.Module], None] | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> None:
    from tqdm.auto import tqdm

    phase_names = list(phases) or ["main"]
    fused = {"fused": True} if cfg.fused_optimizer else {}
    optimizers = [torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused) for _ in phase_names]
    generator = torch.Generator().manual_seed(cfg.seed)
    dataset = ListDataset(examples)
    sampler = RandomSampler(dataset, replacement=False, num_samples=cfg.samples_per_epoch, generator=generator) \
        if cfg.samples_per_epoch is None or cfg.samples_per_epoch <= len(dataset) else \
        RandomSampler(dataset, replacement=True, num_samples=cfg.samples_per_epoch, generator=generator)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=False)
    accumulation = cfg.grad_accumulation
    shared = cfg.shared_batches and accelerator.num_processes > 1
    batches_per_epoch = math.ceil(len(sampler) / cfg.batch_size / (1 if shared else accelerator.num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total = cfg.max_steps if cfg.max_steps is not None else steps_per_epoch * cfg.epochs
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, _lr_lambda(cfg, total, steps_per_epoch)) for o in optimizers]
    if shard:  # FSDP2 does the gradient averaging; accelerate only shares the batches out
        loader = accelerator.prepare(loader)
    elif shared:  # the whole loader in every process (as one process's): the collate takes the share
        from accelerate.data_loader import prepare_data_loader

        loader = prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0,
                                     put_on_device=accelerator.device_placement, rng_types=None)
        model, *prepared = accelerator.prepare(model, *optimizers, *schedulers)
        optimizers, schedulers = prepared[: len(optimizers)], prepared[len(optimizers):]
    else:
        model, loader, *prepared = accelerator.prepare(model, loader, *optimizers, *schedulers)
        optimizers, schedulers = prepared[: len(optimizers)], prepared[len(optimizers):]
    epoch, skip_batches = 0, 0
    if cfg.resume:  # after prepare: accelerate restores into the prepared objects
        epoch, skip_batches = _load_checkpoint(accelerator, cfg, generator, result, description)
    if on_model is not None:
        on_model(model if shard else base_model)
    # Right before the try: the finally below switches it off again, errors included. Sharded:
    # on the copy that trains (dropped afterwards), never on the caller's model.
    checkpointing_was_on = _set_checkpointing(model if shard else base_model, True) \
        if cfg.gradient_checkpointing else None
    model.train()
    bar = tqdm(total=total, initial=result.steps, desc=description,
               disable=not cfg.progress or not accelerator.is_local_main_process)
    try:
        while result.steps < total:
            if on_epoch is not None:  # before the pass draws its first batch (collate may depend on it)
                on_epoch(epoch)
            # The sampler draws the epoch's order lazily from ``generator``: its state now fixes the epoch.
            epoch_start_state = generator.get_state()
            epoch += 1
            epoch_loader = _resumed(accelerator.skip_first_batches(loader, skip_batches)) if skip_batches else loader
            position, skip_batches = skip_batches, 0
            micro_losses: list[float] = []
            for batch in epoch_loader:
                position += 1
                # The last group of an epoch may be short: its losses are averaged over what it has.
                group = min(accumulation, batches_per_epoch - (position - 1) // accumulation * accumulation)
                if accumulation > 1 and position % accumulation != 0 and position < batches_per_epoch:
                    with nullcontext() if shard else accelerator.no_sync(model):
                        micro_losses.append(_accumulate(model, batch, loss_fn, compute, accelerator, shard, group,
                                                        description, result))
                    continue
                value = 0.0
                for phase, optimizer, scheduler in zip(phase_names, optimizers, schedulers):
                    with compute():  # mixed precision: bf16 forward over fp32 master weights
                        loss = loss_fn(model, batch, phase) if phases else loss_fn(model, batch)
                    # Sharded: every process must stop together (the gathering is collective).
                    finite = torch.isfinite(accelerator.reduce(loss.detach(), reduction="mean")) if shard \
                        else torch.isfinite(loss)
                    if not finite:
                        where = f" ({phase} phase)" if phases else ""
                        raise FloatingPointError(f"{description}: loss became {loss.item()} at step {result.steps}{where}; "
                                                 "the model was left at its last finite step")
                    scaled = loss / group if group > 1 else loss
                    if shard:
                        scaled.backward()
                    else:
                        accelerator.backward(scaled)
                    if grad_filter is not None:
                        grad_filter(phase)
                    if cfg.grad_clip:  # DTensor gradients when sharded: torch's clipping reduces the norm
                        (torch.nn.utils.clip_grad_norm_ if shard else accelerator.clip_grad_norm_)(trainable, cfg.grad_clip)
                    if grad_hook is not None:  # after clipping, as MMUnlearner's code masks clipped gradients
                        grad_hook(phase)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    phase_value = accelerator.reduce(loss.detach(), reduction="mean").item()
                    if micro_losses:  # the step's loss: the mean over its micro-batches
                        phase_value = (sum(micro_losses) + phase_value) / group
                        micro_losses = []
                    result.phase_losses.setdefault(phase, []).append(phase_value)
                    value += phase_value
                result.losses.append(value)
                result.steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if stop_check is not None and result.steps % check_every == 0:
                    model.eval()
                    with compute():
                        stop = stop_check(result.steps)
                    model.train()
                    if stop:
                        result.stopped_early = True
                        total = result.steps
                pause = cfg.stop_after is not None and result.steps >= cfg.stop_after and result.steps < total
                if cfg.checkpoint_dir and result.steps < total and (
                        pause or (cfg.save_every is not None and result.steps % cfg.save_every == 0)):
                    # The position is where the next step starts: this epoch's order, this many batches in
                    # (all of them at an epoch's end: resuming draws them again unused, as a finished
                    # pass over the sampler does, so the next epoch's order is the same).
                    _save_checkpoint(accelerator, cfg, result, epoch - 1, position, epoch_start_state)
                if pause:
                    raise TrainingPaused(f"{description}: paused after {result.steps} of {total} steps; the state is "
                                         f"saved in {cfg.checkpoint_dir} (resume to continue)", result)
                if result.steps >= total:
                    break
    finally:
        bar.close()
        if checkpointing_was_on is False:
            _set_checkpointing(model if shard else base_model, False)


def _resumed(loader: Any) -> Iterator[Any]:
    """Iterate the resumed epoch's ``loader`` leaving the global torch RNG as restored: creating a
    DataLoader's iterator draws its worker seed from it, a draw the interrupted run made at the
    epoch's start, before its checkpoint (LoRA dropout would otherwise differ from there on)."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    try:
        first = next(iterator)  # the base iterator (and its draw) is created here
    except StopIteration:
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state)
    yield first
    yield from iterator


def _accumulate(model: torch.nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor],
                compute: Callable[[], ContextManager[Any]], accelerator: Any, shard: bool, group: int,
                description: str, result: TrainResult) -> float:
    """One micro-batch of an accumulated step: its loss / ``group`` backpropagated, no update; its loss."""
    with compute():
        loss = loss_fn(model, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{description}: loss became {loss.item()} at step {result.steps}; "
                                 "the model was left at its last finite step")
    if shard:
        (loss / group).backward()
    else:
        accelerator.backward(loss / group)
    return accelerator.reduce(loss.detach(), reduction="mean").item()


def _save_checkpoint(accelerator: Any, cfg: TrainConfig, result: TrainResult, epoch: int, batch: int,
                     sampler_state: torch.Tensor) -> None:
    """accelerate's state (model, optimizers, schedulers, RNG) and the data position: the epoch
    the next step is in, the batches of it already used, and the sampler's generator state at
    that epoch's start. Written beside the previous one, then swapped in: a crash while saving
    leaves the previous checkpoint whole."""
    import json
    import shutil
    from pathlib import Path

    root = Path(cfg.checkpoint_dir)
    latest, fresh, old = root / "latest", root / "latest.tmp", root / "latest.old"
    if accelerator.is_main_process:
        shutil.rmtree(fresh, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh), safe_serialization=False)  # tied weights (embeddings) pickle as one
    accelerator.wait_for_everyone()  # every process's RNG state is written before the swap
    if accelerator.is_main_process:
        torch.save(sampler_state, fresh / "sampler_generator.pt")
        (fresh / CHECKPOINT_POSITION).write_text(json.dumps(
            {"steps": result.steps, "epoch": epoch, "batches_done_in_epoch": batch, "losses": result.losses,
             "phase_losses": result.phase_losses, "processes": accelerator.num_processes}))
        if latest.exists():
            latest.rename(old)
        fresh.rename(latest)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(accelerator: Any, cfg: TrainConfig, generator: torch.Generator, result: TrainResult,
                     description: str) -> tuple[int, int]:
    """Restore ``_save_checkpoint``'s state; returns (epoch, batches of it already used)."""
    import json
    from pathlib import Path

    latest = Path(cfg.checkpoint_dir) / "latest"
    if not (latest / CHECKPOINT_POSITION).is_file():
        raise FileNotFoundError(f"{description}: nothing to resume: {latest / CHECKPOINT_POSITION} does not exist")
    position = json.loads((latest / CHECKPOINT_POSITION).read_text())
    if position["processes"] != accelerator.num_processes:
        raise ValueError(f"{description}: the checkpoint in {latest} was saved with {position['processes']} "
                         f"process(es); resume it with the same number (this run has {accelerator.num_processes})")
    accelerator.load_state(str(latest))
    generator.set_state(torch.load(latest / "sampler_generator.pt"))
    result.steps = position["steps"]
    result.losses = list(position["losses"])
    result.phase_losses = {k: list(v) for k, v in position["phase_losses"].items()}
    return position["epoch"], position["batches_done_in_epoch"]


def _set_checkpointing(model: torch.nn.Module, on: bool) -> bool:
    """Switch transformers' gradient checkpointing of every block (non-reentrant) on or off;
    returns whether it was on before. Active only in training mode (the blocks check
    ``self.training``), so frozen references and evaluation in eval mode are unaffected."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; "
                         "train with --no-gradient-checkpointing")
    was_on = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    if on and not was_on:
        had_hooks = bool(getattr(model, "_require_grads_hooks", None))
        # Non-reentrant checkpointing needs no input that requires grad: drop the embedding hook
        # transformers adds for the reentrant variant, unless someone had it already.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x name; the old one warns
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not had_hooks and hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
    elif not on and was_on:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    return was_on


def _wrap_lora(model: torch.nn.Module, options: LoraOptions) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    import re

    if options.target_modules != "all-linear" and not any(re.fullmatch(options.target_modules, n) for n in names):
        raise ValueError(f"LoRA target pattern {options.target_modules!r} matches no linear layer of this model")
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=options.target_modules)
    return get_peft_model(model, config)
