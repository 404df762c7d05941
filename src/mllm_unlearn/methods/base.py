"""One interface for every unlearning method, and the registry that finds them by name.

A method reads a model, forget items, retain items and a config, and returns an ``Edit``.
Gradient methods only define a loss; the shared loop (``training.loop``) does the rest.
"""
from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..interventions import CompositeEdit, Edit, LowRankDelta, WeightDelta
from ..models.base import VLM
from ..training import sharding
from ..training.loop import LoraOptions, TrainConfig, TrainResult, train
from ..utils import check_training_numbers


@dataclass
class MethodConfig:
    """Options shared by methods; method-specific ones go in ``extra``."""

    lr: float = 2e-4
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 16
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    retain_weight: float = 1.0
    seed: int = 0
    lora: LoraOptions | None = None
    progress: bool = True
    shard: str | None = None  # "fsdp": train sharded over the processes (training/sharding.py)
    # Gradient checkpointing in the shared loop. None: the pipeline decides (on for models this
    # tool did not build, off for its tiny ones); through the Python API None means off.
    gradient_checkpointing: bool | None = None
    # Localisation passes (MANU statistics, MMUnlearner's Fisher, MIP-Editor's path search) and
    # MLLMEraser's PGD: split each batch into parts of at most this many (padded) tokens.
    max_batch_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Also on every ``replace``: a preset file's or an option's value is checked where it is set.
        check_training_numbers("MethodConfig", lr=self.lr, epochs=self.epochs, max_steps=self.max_steps,
                               batch_size=self.batch_size)
        for name, kinds in (("warmup_ratio", (int, float)), ("retain_weight", (int, float)), ("schedule", (str,)),
                            ("extra", (dict,)), ("max_batch_tokens", (int, type(None))),
                            ("gradient_checkpointing", (bool, type(None))), ("shard", (str, type(None)))):
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                expected = " or ".join("null" if k is type(None) else {"int": "a whole number", "float": "a number",
                                                                       "str": "text", "dict": "an object",
                                                                       "bool": "true/false"}[k.__name__]
                                       for k in kinds)
                raise ValueError(f"MethodConfig.{name} must be {expected}, got {value!r}")
        if not (math.isfinite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise ValueError(f"MethodConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio!r}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ValueError(f"MethodConfig.max_batch_tokens must be >= 1 (or unset), got {self.max_batch_tokens!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Method(ABC):
    name: ClassVar[str]
    uses_retain: ClassVar[bool] = False
    # True: the pipeline appends the benchmark's prior-knowledge items (real-world people,
    # split "pretrain") to the retain items it passes, for methods that must leave them alone too.
    uses_prior_knowledge: ClassVar[bool] = False
    # The modalities whose forget-split knowledge the run checks before unlearning (eval/knowledge.py).
    target_modalities: ClassVar[tuple[str, ...]] = ("vqa", "qa")
    option_names: ClassVar[tuple[str, ...]] = ()  # keys this method reads from ``MethodConfig.extra``
    # Hyperparameters, declared with the method (looked up by methods/defaults.py; docs/methods.md#presets):
    # ``tiny_preset`` for the tiny models this tool builds (structural options; the sweep-chosen values
    # of methods/tiny_presets.json go on top), ``paper_preset`` the paper's / benchmark's settings for
    # 7B-class checkpoints, ``search_space`` what ``mllm-unlearn sweep`` searches (search_spaces.py's format).
    # Each maps ``MethodConfig`` fields to values, ``extra`` to the method's own options.
    tiny_preset: ClassVar[dict[str, Any]] = {}
    paper_preset: ClassVar[dict[str, Any]] = {}
    search_space: ClassVar[dict[str, tuple]] = {}

    def check_options(self, cfg: MethodConfig) -> None:
        unknown = sorted(set(cfg.extra) - set(self.option_names))
        if unknown:
            known = ", ".join(self.option_names) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; this method's options: {known}")

    @abstractmethod
    def unlearn(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig) -> Edit:
        ...


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def _import_all_methods() -> None:
    """Import every module of this package once, so each method file registers itself."""
    import importlib
    import pkgutil

    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules(__import__(package, fromlist=["__path__"]).__path__):
        if info.name not in ("base", "defaults") and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def get_method(name: str) -> Method:
    _import_all_methods()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


def available_methods() -> list[str]:
    _import_all_methods()

    return sorted(METHODS)


class GradientMethod(Method):
    """Methods that differ only in their loss on a batch ``{"forget": ..., "retain": ...}``.

    A method with ``phases`` (e.g. forget then retain) takes one optimizer step per phase,
    each with its own optimizer state; ``phase_loss`` gives each phase's loss and
    ``grad_hook`` may edit gradients (a saliency mask, say) before the update.
    """

    phases: ClassVar[tuple[str, ...]] = ()

    def phase_loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig, phase: str) -> torch.Tensor:
        raise NotImplementedError

    def grad_hook(self, phase: str) -> None:
        """Called after backward and clipping, before the phase's optimizer step."""

    def mask_gradients(self, phase: str) -> None:
        """Called right after backward, before clipping (a mask the clipping norm must see)."""

    def bind(self, model: torch.nn.Module) -> None:
        """Called with the module that trains before the first step: the caller's model, or its
        sharded copy (``--shard fsdp``), whose parameters (same names) hold local slices only;
        methods with hooks or masks on parameters attach them here (``training.sharding.local_part``)."""

    def needs_retain(self, cfg: MethodConfig) -> bool:
        return self.uses_retain

    def loss(self, model: torch.nn.Module, batch: dict[str, dict[str, torch.Tensor]], cfg: MethodConfig) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: define loss() or phases + phase_loss()")

    def trainable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        return None  # everything

    def changeable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        """The model's parameters that ``prepare``, training and ``finalize`` may change (called
        before ``prepare``): only these are snapshotted, to read the edit and restore the model.
        Default: what ``trainable`` selects; none with peft LoRA (its factors are the edit)."""
        if self.loop_lora(cfg) is not None:
            return lambda name, param: False
        return self.trainable(vlm, cfg)

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        """Runs before training on the untouched model (frozen references, precomputed targets)."""

    def loop_lora(self, cfg: MethodConfig) -> LoraOptions | None:
        """LoRA options for the shared loop (peft); a method with its own low-rank scheme returns None."""
        return cfg.lora

    def finalize(self, vlm: VLM) -> None:
        """Runs after training, before the edit is read off the model (e.g. fold helper weights in)."""

    def cleanup(self) -> None:
        """Drops what ``prepare`` built (a frozen model copy, say) once training is over."""

    def edit_meta(self) -> dict[str, Any]:
        """Extra facts about the run to store with the edit (called before ``cleanup``)."""
        return {}

    def unlearn(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig) -> Edit:
        self.check_options(cfg)
        if not forget:
            raise ValueError(f"{self.name}: the forget set is empty")
        uses_retain = self.needs_retain(cfg)
        if uses_retain and not retain:
            raise ValueError(f"{self.name}: needs retain data, but the retain set is empty")
        encoder = Encoder(vlm)
        # The forget set defines an epoch; each forget item gets a retain item of its modality,
        # drawn from seeded shuffles of the whole retain set (RetainCycler).
        cycler = RetainCycler(forget, retain, cfg.seed) if uses_retain else None
        index_of = {id(f): k for k, f in enumerate(forget)}

        def collate(batch: list[Item]) -> dict[str, Any]:
            out: dict[str, Any] = {"forget": to_device(encoder.batch(list(batch), train=True), vlm.device)}
            # Positions in ``forget``, so losses can look up values ``prepare`` computed per item.
            indices = [index_of[id(f)] for f in batch]
            out["forget_index"] = torch.tensor(indices, device=vlm.device)
            if cycler is not None:
                out["retain"] = to_device(encoder.batch([cycler.pair(i) for i in indices], train=True), vlm.device)
            return out

        sharding.refuse_deepspeed(self.name)
        shard = sharding.claim_accelerate_fsdp(cfg.shard)
        if shard and cfg.lora is not None:
            raise ValueError(f"{self.name}: --shard {shard} is for full fine-tuning; a LoRA run fits one GPU "
                             "(launch it without --shard)")
        changeable = self.changeable(vlm, cfg)
        before = {name: p.detach().cpu().clone() for name, p in vlm.model.named_parameters()
                  if changeable is None or changeable(name, p)}
        train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps,
                                batch_size=cfg.batch_size, schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio,
                                seed=cfg.seed, lora=self.loop_lora(cfg), progress=cfg.progress, shard=shard,
                                gradient_checkpointing=bool(cfg.gradient_checkpointing))
        on_epoch = cycler.set_epoch if cycler is not None else None
        hooks = {"grad_filter": self.mask_gradients, "on_model": self.bind, "shard_units": vlm.adapter.shard_units}
        try:
            try:
                with sharding.sharded_training(sharding.sharding_active(shard)):
                    self.prepare(vlm, forget, retain, cfg, encoder)
                    if cfg.lora is None:
                        _check_snapshot(self.name, before, self.trainable(vlm, cfg), vlm.model)
                    if self.phases:
                        result = train(vlm.model, list(forget), collate,
                                       lambda m, b, phase: self.phase_loss(m, b, cfg, phase), train_cfg,
                                       parameters=self.trainable(vlm, cfg), description=f"unlearn: {self.name}",
                                       device=vlm.device, phases=self.phases, grad_hook=self.grad_hook,
                                       merge_lora=False, on_epoch=on_epoch, **hooks)
                    else:
                        result = train(vlm.model, list(forget), collate, lambda m, b: self.loss(m, b, cfg), train_cfg,
                                       parameters=self.trainable(vlm, cfg), description=f"unlearn: {self.name}",
                                       device=vlm.device, merge_lora=False, on_epoch=on_epoch, **hooks)
            except FloatingPointError as error:
                # The loop stopped before applying the bad step: keep that last good state.
                self.finalize(vlm)
                last_good = edit_from_training(before, vlm.model, getattr(error, "train_result", TrainResult()), meta={
                    "method": self.name, "config": cfg.to_dict(), "stopped": str(error)})
                raise UnlearningDiverged(str(error), last_good) from error
            self.finalize(vlm)
            edit = edit_from_training(before, vlm.model, result, meta={
                "method": self.name, "config": cfg.to_dict(), "steps": result.steps, "losses": result.losses,
                **({"phase_losses": result.phase_losses} if self.phases else {}), **self.edit_meta()})
        finally:
            self.cleanup()
            # The method hands back an edit; the model itself is left as it was given.
            with torch.no_grad():
                for name, param in vlm.model.named_parameters():
                    if name in before and param.dtype != before[name].dtype:  # folded in fp32 (finalize)
                        param.data = before[name].to(param.device, copy=True)
                    elif name in before:
                        param.copy_(before[name].to(param.device))
        return edit


def edit_from_training(before: dict[str, torch.Tensor], model: torch.nn.Module, result: TrainResult,
                       meta: dict[str, Any]) -> Edit:
    """The edit training made: changed weights (the fp32 master values where training kept them,
    a few rows/columns where only those changed) and/or LoRA factors read from peft."""
    delta = WeightDelta.from_models(before, model, meta=meta, trained=result.master_weights)
    if result.lora_factors is None:
        return delta
    low_rank = LowRankDelta(result.lora_factors, meta=meta)
    return CompositeEdit([delta, low_rank], meta=meta) if delta.names else low_rank


def _check_snapshot(method: str, before: dict[str, torch.Tensor], trainable: Any, model: torch.nn.Module) -> None:
    """Every parameter that will train must have been snapshotted (else it could not be restored)."""
    if trainable is None:
        missing = [n for n, _ in model.named_parameters() if n not in before]
    else:
        missing = [n for n, p in model.named_parameters() if trainable(n, p) and n not in before]
    if missing:
        raise RuntimeError(f"{method}: parameters {missing[:3]} train but were not snapshotted: "
                           "its changeable() must select every parameter trainable() does")


class RetainCycler:
    """The retain item paired with each forget item, cycling through the whole retain set.

    Retain items come in passes over seeded shuffles of the retain set, one stream per modality
    (a new shuffle per pass, the stream continuing across forget epochs), so every retain item
    is seen once before any is seen twice. Each forget item is paired with a retain item of its
    own modality (the retain term then covers the inputs the forget term moves, and both forward
    passes use the same towers, which DDP requires); a modality the retain set lacks draws from
    all retain items. The k-th time forget item i is drawn, it gets the retain item at slot i of
    the k-th pairing, and a pairing takes the next items of each stream in forget order: so
    pairs do not depend on the batch order or on how processes split the batches (one process
    and several see the same pairs), and the same seed gives the same pairs. With F_m forget
    and R_m retain items of a modality, the retain items of that modality are all seen within
    ceil(R_m / F_m) forget epochs.
    """

    def __init__(self, forget: Sequence[Item], retain: Sequence[Item], seed: int):
        if not retain:
            raise ValueError("retain cycling needs at least one retain item")
        self.retain = list(retain)
        self.modalities = [f.modality for f in forget]
        groups: dict[str, list[int]] = {"*": list(range(len(self.retain)))}
        for k, item in enumerate(self.retain):
            groups.setdefault(item.modality, []).append(k)
        self.streams = {key: _Cycle(indices, random.Random(f"{seed}:{key}")) for key, indices in groups.items()}
        self.pairings: list[list[int]] = []
        self.drawn: dict[int, int] = {}
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The training loop's forget epoch (``train(on_epoch=...)``): the k-th pairing serves epoch k.
        Counting draws per process would not do under several processes, where an item drawn by
        one process in epoch 0 may be drawn by another in epoch 1."""
        self.epoch = epoch

    def pair(self, forget_index: int) -> Item:
        """The retain item for this draw of forget item ``forget_index`` (its epoch's pairing, or,
        without ``set_epoch``, the pairing of its k-th draw)."""
        k = self.drawn.get(forget_index, 0)
        self.drawn[forget_index] = k + 1
        if self.epoch is not None:
            k = self.epoch
        while len(self.pairings) <= k:
            self.pairings.append([self.streams[m if m in self.streams else "*"].next() for m in self.modalities])
        return self.retain[self.pairings[k][forget_index]]


class _Cycle:
    """Indices in passes over fresh shuffles."""

    def __init__(self, indices: list[int], rng: random.Random):
        self.indices, self.rng, self.order, self.position = indices, rng, [], 0

    def next(self) -> int:
        if self.position == len(self.order):
            self.order = list(self.indices)
            self.rng.shuffle(self.order)
            self.position = 0
        self.position += 1
        return self.order[self.position - 1]


class UnlearningDiverged(RuntimeError):
    """The loss became NaN/inf; ``last_good`` is the edit of the last finite step."""

    def __init__(self, message: str, last_good: Edit):
        super().__init__(message)
        self.last_good = last_good


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``model`` (the reference of KL-style losses).

    In a sharded run (``--shard fsdp``) the caller's model does not change while its sharded copy
    trains, so it is the reference itself: no full copy on every process."""
    import copy

    if sharding.in_sharded_training():
        return model.eval()
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def item_batches(items: Sequence[Item], encoder: Encoder, batch_size: int,
                 device: torch.device, max_batch_tokens: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Training-form batches (answer labels) of ``items`` in order, on ``device``; with
    ``max_batch_tokens``, each batch of ``batch_size`` comes in parts of at most that many tokens."""
    from ..training.batching import item_batch_parts

    for parts in item_batch_parts(items, encoder, batch_size, device, max_batch_tokens):
        yield from parts


@torch.no_grad()
def answer_logprobs(model: torch.nn.Module, items: Sequence[Item], encoder: Encoder, batch_size: int) -> torch.Tensor:
    """Summed answer log-probability of each item under ``model``: shape (len(items),), fp32."""
    from ..training.losses import sequence_logprob

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = [sequence_logprob(model, batch).float() for batch in item_batches(items, encoder, batch_size, device)]
    model.train(was_training)
    return torch.cat(values)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
