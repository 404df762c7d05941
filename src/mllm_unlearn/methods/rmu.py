"""RMU, representation misdirection (Li et al. 2024, WMDP), for a VLM's language model.

Forget inputs' hidden states at LM layer ``layer`` are pushed towards c·u (u a random unit
vector drawn with the run's seed, uniform as in WMDP's code); retain inputs' hidden states
are kept near the frozen model's (weight ``alpha``). Only the parameters matched by
``trainable`` are updated (default: the MLPs, gate/up/down projections, of layers
layer-2..layer; WMDP trains the down projections alone, ``-o trainable=...`` restores that).

Where the forget term is taken (``positions``). WMDP's forget corpus (hazardous-topic text)
shares nothing with its retain corpus (Wikitext), so it scores every token. Here forget and
retain items are the same chat template, the same questions and often the same answer words,
differing only in the person: scored at every token, most of the forget term fell on text that
the retain term holds in place, and RMU forgot nothing (forget VQA/QA 100/100 -> 98/100 at
α=100; at α=1 forget and retain fell together). The default, ``entity``, scores the tokens that
carry the person, the portrait's image tokens and the name's tokens (tokens ``ENTITY_RATIO``
times more frequent among forget than retain items), plus the answer-predicting positions
(MIP-Editor's RMisU, which forgets on the same model). ``content`` (everything after the chat
template's shared prefix), ``answer`` (RMisU's positions) and ``all`` (WMDP's) are options.
The retain term scores every non-padding retain token, as WMDP.

Coefficients are relative to the model, so one default serves tiny and 7B models alike:
c = ``steering_coeff`` × the mean token norm of the vanilla model's forget hidden states at
the scored positions of that layer, both mean-squared errors are divided by that norm² /
hidden size, and ``layer`` may be a fraction of the depth (default 0.25: WMDP's layer 7 of
32 is 0.22, MIP-Editor's 7 of 28 is 0.25; a 4-layer tiny model gets layer 1).

Retain data: each forget item gets a retain item of its modality, cycled through seeded
shuffles of the whole retain set (``methods.base.RetainCycler``); WMDP likewise draws one retain
(Wikitext) batch per forget batch.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch

from ..data.collate import IGNORE, Encoder
from ..data.items import Item
from ..models.base import VLM, module_path
from ..training.sharding import in_sharded_training
from ..training.truncated import hidden_at_layer, truncated_reference
from .base import GradientMethod, MethodConfig, item_batches, register_method

# Defaults (sweep in methods/defaults.py): the loss layer as a fraction of the LM's depth (WMDP:
# layer 7 of Zephyr's 32), c in units of the mean hidden norm, α on MSEs relative to that norm.
DEFAULT_LAYER_FRACTION = 0.25
DEFAULT_STEERING_COEFF = 2.0
DEFAULT_ALPHA = 3.0


def resolve_layer(value: Any, depth: int) -> int:
    """``layer`` as given: an int is a layer index; a float in (0, 1) a fraction of the depth
    (rounded, at least 1 so that the layers before it can train)."""
    if isinstance(value, float) and 0.0 < value < 1.0:
        return max(1, min(depth - 1, round(value * depth)))
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"rmu: layer must be a layer index or a fraction of the depth in (0, 1), got {value!r}")
    layer = int(value)
    if not 0 <= layer < depth:
        raise ValueError(f"rmu: layer must be in [0, {depth - 1}] for this model, got {layer}")
    return layer



def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over hidden dims, then over each sequence's unmasked tokens, then over the batch."""
    per_token = ((hidden.float() - target.float()) ** 2).mean(dim=-1)
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


class Misdirection:
    """RMU's machinery, shared with MIP-Editor's RMisU: the hidden states of one LM layer in the
    trained model and in a frozen copy, and the steering target c·u.

    u is uniform in [0, 1)^d (WMDP's code) normalised to unit length, drawn with ``seed``;
    c = ``coeff`` × the mean token norm of the frozen model's forget hidden states at the layer;
    ``scale`` (that norm² per hidden dim) makes the MSEs of every model size comparable.
    """

    def __init__(self) -> None:
        self.reference: torch.nn.Module | None = None
        self.adapter: Any = None
        self.layer = 0
        self.target: torch.Tensor | None = None
        self.scale = 1.0

    def start(self, vlm: VLM, layer: int, coeff: float, forget: Sequence[Item], encoder: Encoder, batch_size: int,
              seed: int, positions: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> None:
        """Call on the untouched model: the frozen copy is the reference of the retain loss.
        ``positions(batch)`` (default: every non-padding token) picks the forget tokens whose
        hidden-state norms set c and ``scale``: those the forget loss will score.

        Forwards stop at ``layer`` and the copy holds only what feeds it (``training.truncated``)."""
        self.adapter, self.layer = vlm.adapter, layer
        # Sharded (--shard fsdp): the caller's model does not change while its sharded copy trains,
        # so it is the reference itself (training/sharding.py), no copy at all.
        self.reference = vlm.model.eval() if in_sharded_training() else \
            truncated_reference(vlm.model, vlm.adapter, layer)
        # Typical size of the layer's hidden states on the forget data, from the vanilla model.
        norms, squares, count = 0.0, 0.0, 0
        with torch.no_grad():
            for batch in item_batches(forget, encoder, batch_size, vlm.device):
                mask = positions(batch) if positions is not None else batch["attention_mask"].bool()
                tokens = self.reference_hidden(batch).float()[mask]
                norms += tokens.norm(dim=-1).sum().item()
                squares += tokens.pow(2).sum(dim=-1).sum().item()
                count += tokens.shape[0]
        width = tokens.shape[-1]
        self.scale = squares / count / width  # mean squared norm per hidden dim
        generator = torch.Generator().manual_seed(seed)
        direction = torch.rand(width, generator=generator)
        self.target = (coeff * norms / count * direction / direction.norm()).to(vlm.device)

    def hidden(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hidden_at_layer(model, self.adapter, self.layer, batch)

    @torch.no_grad()
    def reference_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("misdirection: start() was not called")
        return hidden_at_layer(self.reference, self.adapter, self.layer, batch)

    def forget_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """MSE of the forget hidden states to c·u at ``mask``'s positions, divided by ``scale``."""
        if self.target is None:
            raise RuntimeError("misdirection: start() was not called")
        hidden = self.hidden(model, batch)
        return masked_mse(hidden, self.target.expand_as(hidden), mask) / self.scale

    def retain_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE of the retain hidden states to the frozen model's (non-padding tokens), divided by ``scale``."""
        return masked_mse(self.hidden(model, batch), self.reference_hidden(batch), batch["attention_mask"]) / self.scale

    def stop(self) -> None:
        self.reference, self.target = None, None


POSITIONS = ("entity", "content", "answer", "all")
# A token is an entity token when it is this many times more frequent (share of prompts holding
# it) among the forget items than among the retain items: a forget person's name pieces are, the
# chat template, question wording and shared answer words ("librarian") are not.
ENTITY_RATIO = 4.0


def template_prefix_length(encoder: Encoder, forget: Sequence[Item]) -> int:
    """Tokens every prompt starts with (BOS, system prompt, the user-turn header): the longest
    common prefix of probe prompts with different text, with and without an image. The positions
    after it hold the user's content (image, entity, question) and the answer."""
    from dataclasses import replace

    probes = [Item(person_id="probe", split="probe", modality="qa", task="train", question=q, answer="x")
              for q in ("?", "Zq7 probe")]
    with_image = next((i for i in forget if i.image is not None), None)
    if with_image is not None:
        probes.append(replace(with_image, question="?", options=None))
    rows = [p["input_ids"][0].tolist() for p in encoder.prompts(probes)]
    length = 0
    while all(len(r) > length for r in rows) and len({r[length] for r in rows}) == 1:
        length += 1
    return length


def entity_token_ids(encoder: Encoder, forget: Sequence[Item], retain: Sequence[Item], image_ids: Sequence[int],
                     ratio: float = ENTITY_RATIO, chunk: int = 256) -> torch.Tensor:
    """Token ids that mark the forget people: image tokens (the portrait is the entity in VQA
    items) and tokens ``ratio`` times more frequent in forget than in retain training items
    (names). Frequencies are shares of items whose prompt + answer holds the token."""
    def shares(items: Sequence[Item]) -> dict[int, float]:
        counts: dict[int, int] = {}
        for start in range(0, len(items), chunk):
            batch = encoder.batch(list(items[start:start + chunk]), train=True)
            for row, mask in zip(batch["input_ids"], batch["attention_mask"].bool()):
                for token in set(row[mask].tolist()):
                    counts[token] = counts.get(token, 0) + 1
        return {token: count / max(1, len(items)) for token, count in counts.items()}

    in_forget, in_retain = shares(forget), shares(retain) if retain else {}
    chosen = {t for t, share in in_forget.items() if share > ratio * in_retain.get(t, 0.0)} | set(image_ids)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def forget_positions(batch: dict[str, torch.Tensor], positions: str, prefix: int = 0,
                     entity_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N, T) forget positions scored by RMU's forget term (rows left-padded, answer last).

    ``entity`` (default): the entity's own tokens (``entity_ids``: image tokens, name pieces)
    and the answer-predicting positions; the chat template and question wording, which retain
    prompts share word for word, are left out. ``content``: every position after the template's
    ``prefix`` up to the last answer-predicting one. ``answer``: the answer-predicting positions
    only (MIP-Editor's RMisU). ``all``: every non-padding token (WMDP's code)."""
    attention = batch["attention_mask"].bool()
    if positions == "all":
        return attention
    answer = torch.zeros_like(attention)
    answer[:, :-1] = batch["labels"][:, 1:] != IGNORE
    if positions == "answer":
        return answer
    if positions == "entity":
        if entity_ids is None:
            raise ValueError("rmu: positions=entity needs the entity token ids")
        return answer | (attention & torch.isin(batch["input_ids"], entity_ids.to(batch["input_ids"].device)))
    if positions != "content":
        raise ValueError(f"rmu: positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    offset = torch.cumsum(attention.long(), dim=1) - 1  # index within each unpadded sequence
    after_last_answer = (answer.long().cumsum(dim=1) == answer.long().sum(dim=1, keepdim=True)) & ~answer
    return attention & (offset >= prefix) & ~after_last_answer


@register_method
class RMU(GradientMethod):
    name = "rmu"
    # Hyperparameters (docs/methods.md#presets; the loss layer and positions: docs/preset-history.md#rmu).
    tiny_preset = {"lr": 2e-3, "epochs": 8,
                   "extra": {"steering_coeff": 2.0, "alpha": 3.0, "positions": "entity", "layer": 0.5}}
    # WMDP's RMU: lr 5e-5, batch 4, loss at layer 7 (layers 5-7 trained). Its c = 6.5 and α = 1200
    # are absolute to Zephyr's hidden norm and loss scale; ours are relative (module defaults).
    paper_preset = {"lr": 5e-5, "epochs": 1, "batch_size": 4, "extra": {"layer": 7}}
    search_space = {"lr": ("log", 1e-4, 5e-3), "epochs": ("int", 1, 4), "extra.alpha": ("log", 0.1, 100.0),
                    "extra.steering_coeff": ("log", 0.5, 20.0)}
    uses_retain = True
    option_names = ("layer", "steering_coeff", "alpha", "trainable", "positions")

    def __init__(self) -> None:
        self.steer = Misdirection()
        self.positions, self.prefix, self.entity_ids = "entity", 0, None

    @staticmethod
    def options(vlm: VLM, cfg: MethodConfig) -> tuple[int, float, float, str, str]:
        layers = vlm.adapter.lm_layers(vlm.model)
        layer = resolve_layer(cfg.extra.get("layer", DEFAULT_LAYER_FRACTION), len(layers))
        base = re.escape(module_path(vlm.model, layers))
        default = rf"(.*\.)?{base}\.({'|'.join(str(i) for i in range(max(0, layer - 2), layer + 1))})\.mlp\..*"
        positions = str(cfg.extra.get("positions", "entity"))
        if positions not in POSITIONS:
            raise ValueError(f"rmu: positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        return (layer, float(cfg.extra.get("steering_coeff", DEFAULT_STEERING_COEFF)),
                float(cfg.extra.get("alpha", DEFAULT_ALPHA)), str(cfg.extra.get("trainable", default)), positions)

    def trainable(self, vlm: VLM, cfg: MethodConfig) -> Callable[[str, torch.nn.Parameter], bool] | None:
        pattern = self.options(vlm, cfg)[3]
        names = [n for n, _ in vlm.model.named_parameters()]
        if not any(re.fullmatch(pattern, n) for n in names):
            raise ValueError(f"rmu: trainable pattern {pattern!r} matches no parameter of this model")
        if cfg.lora is not None:
            return None  # peft's adapters on the LoRA targets are what trains
        return lambda name, _: re.fullmatch(pattern, name) is not None

    def prepare(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig,
                encoder: Encoder) -> None:
        layer, coeff, _, _, positions = self.options(vlm, cfg)
        self.positions = positions
        if positions == "content":
            self.prefix = template_prefix_length(encoder, forget)
        if positions == "entity":
            self.entity_ids = entity_token_ids(encoder, forget, retain, sorted(vlm.adapter.visual_token_ids(vlm.model)))
        self.steer.start(vlm, layer, coeff, forget, encoder, cfg.batch_size, cfg.seed, positions=self.mask)

    def mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return forget_positions(batch, self.positions, self.prefix, self.entity_ids)

    def cleanup(self) -> None:
        self.steer.stop()

    def loss(self, model: torch.nn.Module, batch: dict, cfg: MethodConfig) -> torch.Tensor:
        alpha = float(cfg.extra.get("alpha", DEFAULT_ALPHA))
        forget = batch["forget"]
        return self.steer.forget_loss(model, forget, self.mask(forget)) + alpha * self.steer.retain_loss(model, batch["retain"])
