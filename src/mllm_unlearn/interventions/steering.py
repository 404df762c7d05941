"""Steering: input-aware activation steering of the language model (MLLMEraser's edit).

Per steered LM layer l a matrix W_l (hidden × hidden). After block l runs, the steering
vector s = strength · (h_last · W_l) is computed from the block's output at the last
position and added to the block's output:

- **prefill** (the forward pass that starts from an empty KV cache, or any forward without
  a cache, e.g. the likelihood MCQ scorer): s is added to *every* position of the sequence,
  as MLLMEraser's released code does, so the keys and values cached for the prompt carry the
  steering and every later decoding step attends to steered states. h_last is the last
  position, which is the last real token because batches are left-padded (``data.collate``).
- **decode steps** (``decode=True`` only): each new token's own output h_t gives s = strength ·
  (h_t · W_l), added to that token. With ``decode=False`` (default, the released code's choice)
  decode steps are untouched and the steering persists only through the cache.

Prefill vs decode is read from the KV cache, not from the sequence length (a one-token
prompt is still a prefill; a multi-token continuation is not): a forward pre-hook on the
first LM layer records how many positions the cache held before this forward
(``cache.get_seq_length(0)``, the same call for LLaVA, Qwen2-VL and Qwen2.5-VL in
transformers 5.x), and the steering hooks read it. Decoder layers receive the cache as
``past_key_values=`` up to transformers 5.23 and as ``cache=`` from 5.24 (``layer_cache``
reads either, by keyword or by position); missing it would take every decode step for a
prefill and silently ignore ``decode=False``.

W is input-aware by construction (``methods/mllmeraser.py``): W = P·Δ with P a projector onto
the null space of retain activations, so h_last · W ≈ 0 for retained inputs. Nothing in the
model's parameters changes; removing the hooks restores the model exactly.

**Lifted gate** (optional, per layer): ``RandomFeatures`` φ maps h to a wider space first and
W is (lifted width × hidden), s = strength · φ(h_last) · W. A narrow model's retain states fill
its hidden space, leaving no null space to gate with; a random ReLU lift (a kernel gate) gives
the closed form room. The feature map is stored with the edit, so it is reproduced exactly.

**What the gate reads** (``pool``): ``"last"`` (the paper) is h_last above. ``"mean"`` is the
mean of the block's output over the prompt's real positions (the attention mask, recorded by a
pre-hook on the whole model, excludes left padding; image positions count). In a small model
the last position of a text-only prompt carries little of the person named mid-prompt, while
the mean does; the steering vector is still added to every position. With ``decode=True`` and
``"mean"``, each decode step uses the running mean over the prompt and the tokens so far.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .base import Edit, EditHandle, register_edit


def _output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class RandomFeatures:
    """φ(h) = relu(((h − mean) / scale) · proj + bias): random ReLU features of standardised states.

    ``mean`` (hidden,) and ``scale`` (a positive number) standardise the states (taken from the
    retain activations); ``proj`` (hidden × width) is Gaussian / √hidden and ``bias`` (width,) is
    uniform in [−1, 1], so about half the features are active on a typical state.
    """

    def __init__(self, mean: torch.Tensor, scale: float, proj: torch.Tensor, bias: torch.Tensor):
        self.mean = torch.as_tensor(mean).detach().float().cpu().contiguous()
        self.proj = torch.as_tensor(proj).detach().float().cpu().contiguous()
        self.bias = torch.as_tensor(bias).detach().float().cpu().contiguous()
        self.scale = float(scale)
        if self.mean.dim() != 1 or self.proj.dim() != 2 or self.bias.dim() != 1:
            raise ValueError("random features need mean (hidden,), proj (hidden × width) and bias (width,)")
        if self.proj.shape != (self.mean.shape[0], self.bias.shape[0]):
            raise ValueError(f"random features: proj is {tuple(self.proj.shape)}, expected "
                             f"({self.mean.shape[0]}, {self.bias.shape[0]}) from mean and bias")
        if not self.scale > 0:
            raise ValueError(f"random features: scale must be > 0, got {self.scale}")

    @classmethod
    def draw(cls, mean: torch.Tensor, scale: float, width: int, seed: int) -> "RandomFeatures":
        """A seeded draw of ``width`` features for states of size ``mean.shape[0]``."""
        if width < 1:
            raise ValueError(f"random features: width must be >= 1, got {width}")
        hidden = int(mean.shape[0])
        generator = torch.Generator().manual_seed(seed)
        proj = torch.randn(hidden, width, generator=generator) / hidden ** 0.5
        bias = torch.rand(width, generator=generator) * 2 - 1
        return cls(mean, scale, proj, bias)

    @property
    def hidden_size(self) -> int:
        return int(self.proj.shape[0])

    @property
    def width(self) -> int:
        return int(self.proj.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.mean, self.proj, self.bias))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "RandomFeatures":
        """A copy on ``device`` in ``dtype`` (the hooks convert once per apply, not per forward)."""
        moved = copy.copy(self)
        moved.mean, moved.proj, moved.bias = (t.to(device, dtype) for t in (self.mean, self.proj, self.bias))
        return moved

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = self.proj.dtype
        z = ((hidden.to(dtype) - self.mean.to(hidden.device)) / self.scale) @ self.proj.to(hidden.device)
        return torch.relu(z + self.bias.to(hidden.device))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.proj": self.proj, f"{prefix}.bias": self.bias,
                f"{prefix}.scale": torch.tensor(self.scale, dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str) -> "RandomFeatures":
        return cls(tensors[f"{prefix}.mean"], float(tensors[f"{prefix}.scale"]), tensors[f"{prefix}.proj"],
                   tensors[f"{prefix}.bias"])


POOLS = ("last", "mean")


def pooled_state(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pool: str) -> torch.Tensor:
    """The (batch, hidden) state a gate reads from a block's output (batch, positions, hidden):
    the last position (batches are left-padded), or the mean over the positions the 2-D
    ``attention_mask`` marks real (its last ``positions`` columns; all positions if None)."""
    if pool == "last":
        return hidden[:, -1, :]
    if pool != "mean":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    total, count = _masked_sum(hidden, attention_mask)
    return total / count.clamp(min=1)


def _masked_sum(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ over real positions of h, their count (batch, 1)) for ``pool="mean"``."""
    if attention_mask is None:
        return hidden.sum(dim=1), torch.full_like(hidden[:, 0, :1], hidden.shape[1])
    weights = attention_mask[:, -hidden.shape[1]:].to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1), weights.sum(dim=1)


# The names transformers 5.x gives a decoder layer's KV cache argument: ``cache`` from 5.24,
# ``past_key_values`` before (deprecated, renamed by the layer's own decorator, which runs after
# module hooks, so a hook sees whichever spelling the caller used); the last two are older
# spellings some architectures still use.
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")


@functools.lru_cache(maxsize=None)
def _cache_position(layer_type: type) -> int | None:
    """Index among the positional arguments of ``layer_type.forward`` (without self) of its
    cache parameter, or None when it has none that can be passed by position."""
    try:
        parameters = list(inspect.signature(layer_type.forward).parameters.values())[1:]
    except (TypeError, ValueError):  # a forward without a readable signature
        return None
    for index, parameter in enumerate(parameters):
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return None
        if parameter.name in CACHE_ARGUMENTS:
            return index
    return None


def layer_cache(layer: nn.Module, args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """The KV cache a decoder layer's call received (None when it has none), whatever the
    transformers version calls it: by keyword under any name in ``CACHE_ARGUMENTS``, or by
    position as the layer's ``forward`` declares it."""
    for name in CACHE_ARGUMENTS:
        if kwargs.get(name) is not None:
            cache = kwargs[name]
            break
    else:
        position = _cache_position(type(layer))
        if position is None or position >= len(args) or args[position] is None:
            return None
        cache = args[position]
    if not callable(getattr(cache, "get_seq_length", None)):
        raise TypeError(f"steering: {type(layer).__name__} received a KV cache of type {type(cache).__name__}, "
                        "which has no get_seq_length(); this transformers version is not supported")
    return cache


class _StepState:
    """Whether the forward now running is a prefill (set by a pre-hook on the first LM layer),
    and its 2-D attention mask (set by a pre-hook on the whole model, for ``pool="mean"``)."""

    def __init__(self) -> None:
        self.prefill = True
        self.attention_mask: torch.Tensor | None = None
        self.running: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (Σh, count) for decode steps

    def record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = layer_cache(module, args, kwargs)
        self.prefill = cache is None or int(cache.get_seq_length(0)) == 0

    def record_mask(self, _module: nn.Module, _args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


@register_edit
class Steering(Edit):
    """Steering matrices per LM layer index, a strength (optionally one per evaluation task),
    whether decode steps are steered too, and optionally per layer a feature map that lifts the
    states before the matrix (then the matrix is lifted width × hidden)."""

    kind = "steering"

    def __init__(self, matrices: Mapping[int, torch.Tensor | tuple[torch.Tensor, torch.Tensor]], strength: float = 1.0,
                 decode: bool = False, meta: dict[str, Any] | None = None,
                 task_strengths: Mapping[str, float] | None = None,
                 features: Mapping[int, RandomFeatures] | None = None, pool: str = "last"):
        """``matrices``: per layer W, or its rank-one factors (u, v) with W = u·vᵀ."""
        if not matrices:
            raise ValueError("a steering edit needs at least one layer's matrix")
        self.features: dict[int, RandomFeatures] = {int(k): v for k, v in (features or {}).items()}
        unknown = set(self.features) - {int(k) for k in matrices}
        if unknown:
            raise ValueError(f"feature maps given for layers {sorted(unknown)} that have no steering matrix")
        # MLLMEraser's closed form gives W = w·rᵀ (one target direction): such a W is held, applied
        # and saved as its two vectors (a 7B model's 31 layers of 4096 × 4096 would be 2 GB in fp32);
        # other matrices are kept whole.
        self.factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._full: dict[int, torch.Tensor] = {}
        for layer, matrix in sorted(matrices.items()):
            layer = int(layer)
            if isinstance(matrix, (tuple, list)):
                left, right = (torch.as_tensor(t).detach().to("cpu", copy=True).contiguous() for t in matrix)
                if left.dim() != 1 or right.dim() != 1:
                    raise ValueError(f"steering factors of layer {layer} must be two vectors, got shapes "
                                     f"{tuple(left.shape)} and {tuple(right.shape)}")
                self.factors[layer] = (left, right)
                shape = (left.shape[0], right.shape[0])
            else:
                matrix = torch.as_tensor(matrix).detach().to("cpu", copy=True).contiguous()
                if matrix.dim() != 2:
                    raise ValueError(f"steering matrix of layer {layer} must be 2-D, got shape {tuple(matrix.shape)}")
                shape = tuple(matrix.shape)
                pair = rank_one_factors(matrix)
                if pair is not None:
                    self.factors[layer] = pair
                else:
                    self._full[layer] = matrix
            lift = self.features.get(layer)
            if lift is None and shape[0] != shape[1]:
                raise ValueError(f"steering matrix of layer {layer} must be square (hidden × hidden), got shape {shape}")
            if lift is not None and shape != (lift.width, lift.hidden_size):
                raise ValueError(f"steering matrix of layer {layer} must be (lifted width × hidden) = "
                                 f"({lift.width}, {lift.hidden_size}) for its feature map, got {shape}")
        self._layers = sorted(set(self.factors) | set(self._full))
        widths = {self._shape(layer)[1] for layer in self._layers}
        if len(widths) != 1:
            raise ValueError(f"steering matrices have different widths {sorted(widths)}")
        self.strength = float(strength)
        # Per evaluation task ("mcq", "cloze", "generation"): MLLMEraser's released evaluation
        # steers cloze harder (0.3) than classification and generation (0.2). Others use ``strength``.
        self.task_strengths = {str(task): float(value) for task, value in (task_strengths or {}).items()}
        self.active_strength = self.strength  # what the hooks use now (see ``for_task``)
        self.decode = bool(decode)
        if pool not in POOLS:
            raise ValueError(f"steering pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        self.meta = dict(meta or {})

    @contextmanager
    def for_task(self, task: str) -> Iterator[None]:
        previous = self.active_strength
        self.active_strength = self.task_strengths.get(task, self.strength)
        try:
            yield
        finally:
            self.active_strength = previous

    def _shape(self, layer: int) -> tuple[int, int]:
        if layer in self.factors:
            left, right = self.factors[layer]
            return left.shape[0], right.shape[0]
        return tuple(self._full[layer].shape)

    @property
    def matrices(self) -> dict[int, torch.Tensor]:
        """Each layer's W as a full matrix (materialised from the factors where it is rank one)."""
        return {layer: torch.outer(*self.factors[layer]) if layer in self.factors else self._full[layer]
                for layer in self._layers}

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    @property
    def hidden_size(self) -> int:
        return self._shape(self._layers[0])[1]

    @property
    def dtype(self) -> torch.dtype:
        layer = self._layers[0]
        return self.factors[layer][0].dtype if layer in self.factors else self._full[layer].dtype

    @property
    def extra_bytes(self) -> int:
        """Memory the steering matrices (or their factors) and feature maps add, as stored."""
        tensors = [t for pair in self.factors.values() for t in pair] + list(self._full.values())
        return sum(t.numel() * t.element_size() for t in tensors) + sum(f.nbytes for f in self.features.values())

    def gate_input(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """What multiplies W_layer: the states themselves, or their lifted features."""
        lift = self.features.get(layer)
        return hidden if lift is None else lift(hidden)

    def steering_vectors(self, layer: int, hidden_last: torch.Tensor) -> torch.Tensor:
        """strength · (h · W_layer) for rows h of ``hidden_last`` (…, hidden), in fp32 (the active task's strength)."""
        gate = self.gate_input(layer, hidden_last.float()).float()
        if layer in self.factors:
            left, right = (t.float().to(hidden_last.device) for t in self.factors[layer])
            return self.active_strength * ((gate @ left)[..., None] * right)
        return self.active_strength * (gate @ self._full[layer].float().to(hidden_last.device))

    def applied_bytes(self, element_size: int) -> int:
        """Memory the hooks hold on the model's device, at ``element_size`` bytes per number."""
        numbers = sum(t.numel() for pair in self.factors.values() for t in pair)
        numbers += sum(matrix.numel() for matrix in self._full.values())
        numbers += sum(f.mean.numel() + f.proj.numel() + f.bias.numel() for f in self.features.values())
        return numbers * element_size

    def apply(self, vlm: Any, record: dict[tuple[str, int], list[torch.Tensor]] | None = None) -> EditHandle:
        """Register the hooks. ``record``, if given, receives the norms of the steering vectors added,
        under ("prefill" | "decode", layer): one row per input (a diagnostic of the gate)."""
        layers = vlm.adapter.lm_layers(vlm.model)
        for layer in self._layers:
            if not 0 <= layer < len(layers):
                raise ValueError(f"steering edit does not fit this model: it steers LM layer {layer}, "
                                 f"the model has {len(layers)} layers")
        width = getattr(layers[0], "hidden_size", None) or _hidden_width(layers[0])
        if width is not None and width != self.hidden_size:
            raise ValueError(f"steering edit does not fit this model: matrices are {self.hidden_size} wide, "
                             f"the LM hidden size is {width}")
        state = _StepState()
        handles = [layers[0].register_forward_pre_hook(state.record, with_kwargs=True)]
        if self.pool == "mean":
            handles.append(vlm.model.register_forward_pre_hook(state.record_mask, with_kwargs=True))
        for layer in self._layers:
            param = next(layers[layer].parameters())
            lift = self.features[layer].to(param.device, param.dtype) if layer in self.features else None
            # converted once per apply, not per forward
            if layer in self.factors:
                left, right = (t.to(param.device, param.dtype) for t in self.factors[layer])

                def product(gate: torch.Tensor, left: torch.Tensor = left, right: torch.Tensor = right) -> torch.Tensor:
                    return (gate @ left.to(gate.dtype))[..., None] * right.to(gate.dtype)
            else:
                weights = self._full[layer].to(param.device, param.dtype)

                def product(gate: torch.Tensor, weights: torch.Tensor = weights) -> torch.Tensor:
                    return gate @ weights.to(gate.dtype)

            def gated(hidden: torch.Tensor, product: Any = product, lift: RandomFeatures | None = lift) -> torch.Tensor:
                return product(hidden if lift is None else lift(hidden).to(hidden.dtype))

            def steer(_module: nn.Module, _args: tuple, output: Any, gated: Any = gated, layer: int = layer) -> Any:
                hidden = _output_hidden(output)
                if state.prefill:
                    if self.pool == "mean":
                        total, count = _masked_sum(hidden, state.attention_mask)
                        read = total / count.clamp(min=1)
                        if self.decode:  # decode steps continue the mean
                            state.running[layer] = (total, count)
                    else:
                        read = hidden[:, -1, :]
                    vector = gated(read) * self.active_strength
                    if record is not None:
                        record.setdefault(("prefill", layer), []).append(vector.detach().float().norm(dim=-1).cpu())
                    return _with_hidden(output, hidden + vector[:, None, :])
                if self.decode and self.pool == "mean" and layer in state.running:
                    total, count = state.running[layer]
                    total, count = total + hidden.sum(dim=1), count + hidden.shape[1]
                    state.running[layer] = (total, count)
                    vector = gated(total / count.clamp(min=1)) * self.active_strength
                    if record is not None:
                        record.setdefault(("decode", layer), []).append(vector.detach().float().norm(dim=-1).cpu())
                    return _with_hidden(output, hidden + vector[:, None, :])
                if self.decode:
                    vectors = gated(hidden) * self.active_strength
                    if record is not None:
                        record.setdefault(("decode", layer), []).append(vectors[:, -1].detach().float().norm(dim=-1).cpu())
                    return _with_hidden(output, hidden + vectors)
                return output

            handles.append(layers[layer].register_forward_hook(steer))

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return EditHandle(undo)

    @torch.no_grad()
    def steering_norms(self, vlm: Any, batches: Any) -> torch.Tensor:
        """Per input, the norm of all its steering vectors together (√Σ_l ‖s_l‖²), with the edit applied."""
        record: dict[tuple[str, int], list[torch.Tensor]] = {}
        handle = self.apply(vlm, record)
        try:
            for batch in batches:
                vlm.model(**batch, logits_to_keep=1)
        finally:
            handle.remove()
        if not record:
            return torch.zeros(0)
        per_layer = [torch.cat(record[("prefill", layer)]) for layer in self.layers]
        return torch.stack(per_layer).pow(2).sum(0).sqrt()

    bakeable = False

    def bake(self, vlm: Any) -> None:
        raise ValueError("a steering edit depends on each input's activations and cannot be baked into the weights; "
                         "apply it (Edit.apply) at inference instead")

    def _save_payload(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"layer.{layer}": matrix for layer, matrix in self._full.items()}
        for layer, (left, right) in self.factors.items():
            tensors[f"layer.{layer}.left"], tensors[f"layer.{layer}.right"] = left, right
        for layer, lift in self.features.items():
            tensors.update(lift.tensors(f"lift.{layer}"))
        save_file(tensors, str(folder / "steering.safetensors"),
                  metadata={"strength": repr(self.strength), "decode": str(self.decode), "pool": self.pool,
                            "task_strengths": json.dumps(self.task_strengths, sort_keys=True)})

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict[str, Any]) -> "Steering":
        from safetensors import safe_open

        file = folder / "steering.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{folder} is not a saved steering edit: {file} is missing")
        with safe_open(str(file), "pt") as handle:
            info = handle.metadata() or {}
            if "strength" not in info or "decode" not in info:
                raise ValueError(f"{file}: metadata must hold 'strength' and 'decode', has {sorted(info)}")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        matrices: dict[int, Any] = {}
        for key, value in tensors.items():
            parts = key.split(".")
            if parts[0] != "layer":
                continue
            if len(parts) == 2:  # a full matrix (and every file saved before factors were stored)
                matrices[int(parts[1])] = value
            elif len(parts) == 3 and parts[2] == "left":
                right = tensors.get(f"layer.{parts[1]}.right")
                if right is None:
                    raise ValueError(f"{file}: layer.{parts[1]}.left has no layer.{parts[1]}.right")
                matrices[int(parts[1])] = (value, right)
        orphans = [key for key in tensors if key.startswith("layer.") and key.endswith(".right")
                   and int(key.split(".")[1]) not in matrices]
        if orphans:
            raise ValueError(f"{file}: {orphans[0]} has no matching .left")
        lifted = sorted({int(key.split(".")[1]) for key in tensors if key.startswith("lift.")})
        try:
            features = {layer: RandomFeatures.from_tensors(tensors, f"lift.{layer}") for layer in lifted}
        except KeyError as error:
            raise ValueError(f"{file}: incomplete feature map, {error.args[0]} is missing") from None
        try:
            task_strengths = json.loads(info.get("task_strengths", "{}"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: metadata 'task_strengths' is not JSON ({error})") from None
        pool = info.get("pool", "last")  # edits saved before the option read the last position
        if pool not in POOLS:
            raise ValueError(f"{file}: metadata 'pool' must be one of {POOLS}, got {pool!r}")
        return cls(matrices, float(info["strength"]), info["decode"] == "True", meta, task_strengths, features, pool)


def rank_one_factors(matrix: torch.Tensor, tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(u, v) with u·vᵀ = ``matrix`` to within ``tolerance`` (relative Frobenius), or None.

    O(rows × columns): v is the largest row's direction and u = matrix · v; no SVD, which would
    cost minutes for a 7B model's 4096 × 4096 matrices."""
    work = matrix.double()
    norm = float(work.norm())
    if norm == 0.0:
        return None
    row = work[int(work.norm(dim=1).argmax())]
    right = row / row.norm()
    left = work @ right
    if float((work - torch.outer(left, right)).norm()) > tolerance * norm:
        return None
    return left.float(), right.float()


def _hidden_width(layer: nn.Module) -> int | None:
    norm = getattr(layer, "input_layernorm", None)
    weight = getattr(norm, "weight", None)
    return int(weight.shape[0]) if weight is not None else None
