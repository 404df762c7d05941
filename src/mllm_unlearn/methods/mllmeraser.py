"""MLLMEraser (Ding et al., arXiv 2510.04217): training-free unlearning by input-aware activation steering.

No parameter changes; the method returns a ``Steering`` edit (``interventions/steering.py``).
Per steered LM layer l (activations = the output of block l at the last position, fp32):

1. **Erasure direction** r_l = mean(erasure) − mean(recall), over last-token states of
   - knowledge-recall pairs: forget question (+ image) answered with the true answer, the
     image adversarially perturbed by ``pgd_steps`` signed-gradient steps on the pixel values
     (L∞ ball ``pgd_eps``) that *lower* the answer's NLL, i.e. strengthen recall;
   - knowledge-erasure pairs: the same inputs (same perturbed images) answered with ``refusal``.
   Text-only forget questions take part too (no image to perturb), so both modalities count.
2. **Input-aware gate**: P projects onto the null space of retain activations. Retain
   activations are the last prompt tokens of the retain items (and of the benchmark's
   real-world people, which the pipeline passes for methods with ``uses_prior_knowledge``);
   C = Σ h hᵀ / n (uncentred, as AlphaSteer), P = Q Qᵀ with Q the eigenvectors of the smallest
   eigenvalues, as many as keep their summed eigenvalues ≤ ``null_energy`` × trace(C)
   (or the smallest ``null_ratio`` × hidden of them, AlphaSteer's rule).
3. **Steering matrix**, AlphaSteer's regularised closed form on the forget prompts' last
   tokens H_f (inference-form prompts, clean images): X = H_f P,
   Δ̃ = pinv(XᵀX/n + λ·m·P) · Xᵀ1 rᵀ/n, W_l = P·Δ̃, where m = ‖X‖²_F / (n·rank P) makes
   ``ridge`` (λ) independent of the activation scale. Then h_f·W ≈ r for forget inputs and
   h_r·W ≈ 0 for retain inputs (h_r P ≈ 0).

Prompts are taken in each form the model is asked in (``forms`` for the forget prompts the gate
opens on, ``retain_forms``, by default the same, for the retain prompts it must stay shut on):
"qa" (the open question) and "mcq"
(the question rendered as a four-option multiple choice with distractors drawn from the same
attribute's values, for items that carry ``Attribute``/``Value`` metadata), so the gate sees
the classification prompts' format as MLLMEraser's extractor did (it formats options too),
"generation" (the open question with MLLMU-Bench's generation instruction appended) and "cloze"
(the answer sentence with its value blanked, with the fill-in-the-blank instruction; items whose
answer holds their ``Value``). A form left out of ``retain_forms`` is one the gate never learns to
stay shut on: retained people's prompts in it get steered too.
``renderings`` (default 4) multiple-choice versions of each item are taken, fresh options each:
one draw leaves the gate open to the option texts' variation on new prompts.
Per-task strength (``task_strengths``, e.g. cloze=0.3 as the released evaluation) is applied
by the evaluator through ``Edit.for_task``.

**Lifted gate** (``lift`` = D > 0; off by default, as in the paper): the gate's input is
φ(h) = relu(((h − μ)/σ)·R + b), D random ReLU features of the state standardised by the retain
prompts' mean μ and spread σ (R Gaussian/√hidden, b uniform in [−1, 1], seeded), and steps 2-3
run on φ(h) instead of h, so W is D × hidden and s = strength · φ(h)·W. Why: the gate needs
directions that retain states do not fill, which a 4096-wide model has and a narrow one does
not (the default tiny LM is 128 wide: its retain states span the whole space). A random lift
is a kernel gate: on the default tiny LLaVA, held-out classification prompts of retained people
got 1.7% (VQA) and 15% (QA) of the forget prompts' steering with D = 4096 and a soft null space
(``retain_penalty``), against 55-110% with the linear gate in every setting tried. Costs: two more passes over
the prompts (the lift is standardised with the retain prompts' statistics from the first) and
D × D second moments (134 MB each in fp64 at D = 4096), so it is meant for narrow models.

**Pooled gate read** (``pool="mean"``; the paper's ``"last"`` by default): the gate reads the
mean of block l's output over the prompt's real positions instead of the last position (the
direction r is still from last-token states of the pairs, and the vector is still added at
every position). In a narrow model the last position of a text-only prompt carries little of
the person named mid-prompt: on the default tiny LLaVA, with the lift, held-out prompts of
retained people got 26-36% (QA) of the forget prompts' gate response reading the last position
and 6% reading the mean (VQA 12-15% and 4-5%).

Statistics are streamed: only per-layer sums (d) and second moments (d × d) are kept.
Activation ↔ steering indexing is consistent (both use block l's *output*), unlike the
released code's off-by-one (hidden_states[l] is block l's input). Our direction points
towards erasure, so ``strength`` > 0 erases (the released code uses −0.2 with recall − erasure).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Sequence

import torch

from ..data.collate import Encoder
from ..data.items import Item
from ..data.prompts import McqRenderer, as_task_prompt
from ..eval.evaluator import TASKS
from ..interventions import RandomFeatures, Steering
from ..interventions.steering import POOLS, pooled_state
from ..models.base import VLM
from ..training.batching import batch_parts, token_lengths
from ..training.losses import model_inputs, sequence_nll
from ..utils import process_rank_and_count
from .base import Method, MethodConfig, register_method, to_device

FORMS = ("qa", "mcq", "generation", "cloze")


def null_space_projector(second_moment: torch.Tensor, energy: float | None = None,
                         ratio: float | None = None) -> torch.Tensor:
    """Projector onto the low-energy eigenspace of a retain second-moment matrix (d × d).

    ``ratio`` (AlphaSteer): the ``ratio``·d smallest eigen-directions. ``energy``: as many of the
    smallest as keep their summed eigenvalues ≤ ``energy`` × trace (at least one direction);
    ``energy`` = 1 keeps every direction (P = I: no hard null space, see ``retain_penalty``).
    """
    d = second_moment.shape[0]
    if ratio is None and energy == 1:
        return torch.eye(d, dtype=torch.float64)  # no eigendecomposition needed (D × D when lifted)
    values, vectors = torch.linalg.eigh(second_moment.double())  # ascending
    values = values.clamp(min=0)
    if ratio is not None:
        if not 0 < ratio < 1:
            raise ValueError(f"null_ratio must be in (0, 1), got {ratio}")
        keep = max(1, int(round(ratio * d)))
    else:
        if energy is None or not 0 <= energy <= 1:
            raise ValueError(f"null_energy must be in [0, 1], got {energy}")
        budget = energy * float(values.sum())
        keep = max(1, int((torch.cumsum(values, 0) <= budget).sum()))
    basis = vectors[:, :keep]
    return basis @ basis.T


def steering_matrix(projector: torch.Tensor, forget_sum: torch.Tensor, forget_second_moment: torch.Tensor,
                    count: int, direction: torch.Tensor, ridge: float, retain_second_moment: torch.Tensor | None = None,
                    retain_penalty: float = 0.0) -> torch.Tensor:
    """W = P · pinv(P S P / n + β P C_r P + λ m P) · P (Σ h_f / n) rᵀ: AlphaSteer's ridge closed form, from moments.

    S = Σ h_f h_fᵀ and Σ h_f are the forget activations' moments (X = H_f P, XᵀX = P S P and
    Xᵀ1 = P Σ h_f, so nothing per-sample is needed); m = tr(P S P)/(n · rank P). β
    (``retain_penalty``, 0 in AlphaSteer) adds the retain activations' response ‖H_r P W‖²/n_r to
    the least squares (C_r = their second moment): a soft null-space constraint for models whose
    retain activations leave no hard null space.
    """
    P = projector.double()
    gram = P @ forget_second_moment.double() @ P / count
    rank = max(1.0, float(torch.trace(P)))
    scale = float(torch.trace(gram)) / rank
    system = gram + ridge * scale * P
    if retain_penalty:
        if retain_second_moment is None:
            raise ValueError("retain_penalty needs the retain second moment")
        system = system + retain_penalty * P @ retain_second_moment.double() @ P
    target = (P @ forget_sum.double() / count)[:, None] @ direction.double()[None, :]
    if rank >= P.shape[0] - 0.5 and ridge > 0:  # P = I and the ridge makes the system positive definite
        return torch.linalg.solve(system, target).float()
    return (P @ torch.linalg.pinv(system, hermitian=True) @ target).float()


class LastTokenTap:
    """Forward hooks that keep, per chosen LM layer, the state a gate reads (fp32): the output at
    the last position, or with ``pool="mean"`` its mean over the batch's real positions (the
    same ``pooled_state`` the steering hooks compute at inference)."""

    def __init__(self, vlm: VLM, layers: Sequence[int]):
        self.blocks = vlm.adapter.lm_layers(vlm.model)
        self.layers = list(layers)
        self.states: dict[int, torch.Tensor] = {}
        self._mask: torch.Tensor | None = None
        self._pool = "last"

    @contextmanager
    def tapped(self) -> Iterator["LastTokenTap"]:
        handles = []
        for layer in self.layers:
            def keep(_module: Any, _inputs: Any, output: Any, layer: int = layer) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                self.states[layer] = pooled_state(hidden.detach(), self._mask, self._pool).float()

            handles.append(self.blocks[layer].register_forward_hook(keep))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def run(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], pool: str = "last") -> dict[int, torch.Tensor]:
        self.states, self._pool, self._mask = {}, pool, batch.get("attention_mask")
        model(**model_inputs(batch), logits_to_keep=1)
        return dict(self.states)


class Moments:
    """Streamed per-layer Σh and Σhhᵀ (fp64) and the row count; of φ_l(h) where ``features`` has a map for l.

    Lifted rows are buffered and folded in ``flush_rows`` at a time: one wide product instead of
    a D × D rank-k update per batch."""

    flush_rows = 1024

    def __init__(self, second: bool = True, features: dict[int, RandomFeatures] | None = None):
        self.second = second
        self.features = dict(features or {})
        self.sum: dict[int, torch.Tensor] = {}
        self._outer: dict[int, torch.Tensor] = {}
        self._pending: dict[int, list[torch.Tensor]] = {}
        self.count = 0

    def add(self, states: dict[int, torch.Tensor]) -> None:
        for layer, h in states.items():
            h = h.float().cpu()
            if layer in self.features:
                h = self.features[layer](h)
            self.sum[layer] = self.sum.get(layer, 0) + h.double().sum(0)
            if self.second:
                pending = self._pending.setdefault(layer, [])
                pending.append(h)
                if sum(len(rows) for rows in pending) >= self.flush_rows:
                    self._fold(layer)
        self.count += next(iter(states.values())).shape[0]

    def _fold(self, layer: int) -> None:
        rows = torch.cat(self._pending.pop(layer))
        # fp32 rows of one chunk, fp64 across chunks; unlifted states keep fp64 throughout
        product = rows.T @ rows if layer in self.features else rows.double().T @ rows.double()
        self._outer[layer] = self._outer.get(layer, 0) + product.double()

    @property
    def outer(self) -> dict[int, torch.Tensor]:
        for layer in list(self._pending):
            self._fold(layer)
        return self._outer

    def all_reduce(self, device: torch.device) -> None:
        """Sum the moments of all processes (each added its share of the batches) into every one.
        Collective; a process that saw no batch takes part with zeros."""
        rank_count = process_rank_and_count()[1]
        if rank_count == 1:
            return
        outer = self.outer if self.second else {}
        shapes = {layer: (tuple(total.shape), tuple(outer[layer].shape) if layer in outer else None)
                  for layer, total in self.sum.items()}
        gathered: list[Any] = [None] * rank_count
        torch.distributed.all_gather_object(gathered, (shapes, self.count))
        layers: dict[int, tuple] = {}
        for their_shapes, _ in gathered:
            layers.update(their_shapes)
        self.count = sum(count for _, count in gathered)

        def summed(table: dict[int, torch.Tensor], layer: int, shape: tuple) -> torch.Tensor:
            value = table.get(layer, torch.zeros(shape, dtype=torch.float64)).to(device)  # NCCL needs device tensors
            torch.distributed.all_reduce(value)
            return value.cpu()

        for layer in sorted(layers):
            sum_shape, outer_shape = layers[layer]
            self.sum[layer] = summed(self.sum, layer, sum_shape)
            if outer_shape is not None:
                self._outer[layer] = summed(self._outer, layer, outer_shape)

    def mean(self, layer: int) -> torch.Tensor:
        return self.sum[layer] / max(1, self.count)

    def spread(self, layer: int) -> float:
        """√(mean per-coordinate variance): one scale for the whole state."""
        mean = self.mean(layer)
        variance = (float(torch.trace(self.outer[layer])) / max(1, self.count) - float(mean @ mean)) / mean.numel()
        return max(variance, 1e-12) ** 0.5


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without grad for the duration (PGD needs the image gradient only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def perturb_pixels(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, eps: float,
                   step_size: float) -> torch.Tensor:
    """PGD on ``pixel_values`` (L∞ ball of radius ``eps``) that minimises the answers' NLL.

    The loss is the sum of per-sequence NLLs, so each image's gradient is its own sequence's.
    """
    pixels = batch["pixel_values"].detach()
    delta = torch.zeros_like(pixels)
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = sequence_nll(model, {**batch, "pixel_values": pixels + delta}).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta - step_size * grad.sign()).clamp(-eps, eps).detach()
    return (pixels + delta).detach()


@register_method
class MLLMEraser(Method):
    name = "mllmeraser"
    # Hyperparameters (docs/methods.md#presets; why a lifted gate at this width: docs/preset-history.md#mllmeraser).
    tiny_preset = {"batch_size": 32, "extra": {"layers": "1,2", "strength": 15.0, "lift": 4096, "pool": "mean",
                                               "task_strengths": {"generation": 25.0},
                                               "forms": "mcq,generation,cloze",
                                               "retain_forms": "mcq,generation,cloze",
                                               "null_energy": 1.0, "retain_penalty": 1000.0, "ridge": 0.01,
                                               "renderings": 4, "pgd_steps": 3, "pgd_eps": 0.05}}
    # The paper: strength 0.2 on every layer but the first (0.3 for cloze). Its statistics/PGD passes
    # at batch 16 are predicted at 77 GiB on Qwen2.5-VL-7B (benchmarks/scale_memory.py): passes of at
    # most 4096 tokens stay below 80 GB.
    paper_preset = {"max_batch_tokens": 4096, "extra": {"layers": "all", "strength": 0.2, "task_strengths": {"cloze": 0.3}}}
    search_space = {"extra.strength": ("float", 5.0, 40.0), "extra.retain_penalty": ("log", 10.0, 1e4)}
    uses_retain = True
    uses_prior_knowledge = True  # real-world people's data gates steering off for them too
    option_names = ("layers", "strength", "ridge", "null_energy", "null_ratio", "pgd_steps", "pgd_eps",
                    "pgd_step_size", "refusal", "decode", "forms", "retain_forms", "max_retain", "retain_penalty", "task_strengths",
                    "renderings", "lift", "pool")

    @staticmethod
    def options(vlm: VLM, cfg: MethodConfig) -> dict[str, Any]:
        extra = cfg.extra
        n_layers = len(vlm.adapter.lm_layers(vlm.model))
        layers = extra.get("layers", "all")
        if layers == "all":
            layers = list(range(1, n_layers)) if n_layers > 1 else [0]  # the paper: every layer but the first
        elif isinstance(layers, str):
            layers = [int(x) for x in layers.replace(",", " ").split()]
        elif isinstance(layers, int):
            layers = [layers]
        layers = sorted({int(x) for x in layers})
        if not layers or not all(0 <= x < n_layers for x in layers):
            raise ValueError(f"mllmeraser: layers must be 'all' or indices in [0, {n_layers - 1}], got {extra.get('layers')!r}")
        def form_list(name: str, default: Sequence[str]) -> list[str]:
            value = extra.get(name, list(default))
            value = [f.strip() for f in value.split(",")] if isinstance(value, str) else list(value)
            if not value or set(value) - set(FORMS):
                raise ValueError(f"mllmeraser: {name} must be a subset of {FORMS}, got {extra.get(name)!r}")
            return value

        forms = form_list("forms", FORMS)
        opts = {
            "layers": layers, "forms": forms, "retain_forms": form_list("retain_forms", forms),
            "strength": float(extra.get("strength", 0.2)),  # the paper's |−0.2| (our r points to erasure)
            "ridge": float(extra.get("ridge", 0.1)),
            "null_energy": float(extra.get("null_energy", 0.01)),
            "null_ratio": None if extra.get("null_ratio") is None else float(extra["null_ratio"]),
            "pgd_steps": int(extra.get("pgd_steps", 3)),
            "pgd_eps": float(extra.get("pgd_eps", 0.05)),
            "refusal": str(extra.get("refusal", "I don't know.")),
            "decode": _as_bool(extra.get("decode", False), "decode"),
            "max_retain": None if extra.get("max_retain") is None else int(extra["max_retain"]),
            "retain_penalty": float(extra.get("retain_penalty", 0.0)),
            "task_strengths": _task_strengths(extra.get("task_strengths", {})),
            "renderings": int(extra.get("renderings", 4)),
            "lift": int(extra.get("lift", 0)),
            "pool": str(extra.get("pool", "last")),  # the paper's gate reads the last position
        }
        if opts["pool"] not in POOLS:
            raise ValueError(f"mllmeraser: pool must be one of {POOLS} (which state the gate reads), got {opts['pool']!r}")
        if opts["renderings"] < 1:
            raise ValueError(f"mllmeraser: renderings must be >= 1, got {opts['renderings']}")
        if opts["lift"] < 0:
            raise ValueError(f"mllmeraser: lift must be 0 (the paper's linear gate) or a feature count > 0, "
                             f"got {opts['lift']}")
        opts["pgd_step_size"] = float(extra.get("pgd_step_size", 2.5 * opts["pgd_eps"] / max(1, opts["pgd_steps"])))
        if opts["ridge"] < 0 or opts["retain_penalty"] < 0:
            raise ValueError(f"mllmeraser: ridge and retain_penalty must be >= 0, got {opts['ridge']}, "
                             f"{opts['retain_penalty']}")
        if opts["pgd_steps"] < 0 or opts["pgd_eps"] < 0:
            raise ValueError("mllmeraser: pgd_steps and pgd_eps must be >= 0")
        if not opts["refusal"].strip():
            raise ValueError("mllmeraser: refusal must be a non-empty text")
        return opts

    def unlearn(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], cfg: MethodConfig) -> Steering:
        self.check_options(cfg)
        opts = self.options(vlm, cfg)
        if not forget:
            raise ValueError("mllmeraser: the forget set is empty")
        if not retain:
            raise ValueError("mllmeraser: needs retain data (the null space of its activations gates the steering)")
        stats = self.statistics(vlm, forget, retain, opts, cfg.batch_size, cfg.seed, cfg.max_batch_tokens)
        encoder = Encoder(vlm)
        unknown = vlm.tokenizer.unk_token_id
        meta = {"method": self.name, "config": cfg.to_dict(), "options": opts,
                "counts": {name: moments.count for name, moments in stats.items()},
                "retain_splits": sorted({item.split for item in retain}),
                "refusal_unknown_tokens": sum(1 for t in encoder.answer_ids(opts["refusal"])
                                              if unknown is not None and t == unknown)}
        return self.build_edit(stats, opts, meta)

    def statistics(self, vlm: VLM, forget: Sequence[Item], retain: Sequence[Item], opts: dict[str, Any],
                   batch_size: int, seed: int, max_batch_tokens: int | None = None) -> dict[str, "Moments"]:
        """Streamed moments of every activation set the closed form needs, at ``opts["layers"]``.

        ``max_batch_tokens``: each batch of ``batch_size`` runs in parts of at most that many
        (padded) tokens (``training.batching``); the moments are sums, so the split changes nothing."""
        encoder = Encoder(vlm)
        tap = LastTokenTap(vlm, opts["layers"])
        rng = random.Random(seed)
        retain = list(retain)
        if opts["max_retain"] is not None and len(retain) > opts["max_retain"]:
            retain = rng.sample(retain, opts["max_retain"])
        renderer = McqRenderer(list(forget) + list(retain), seed)
        forget_items = self.inference_prompts(forget, opts["forms"], renderer, opts["renderings"])
        retain_items = self.inference_prompts(retain, opts["retain_forms"], renderer, opts["renderings"])

        def moments(items: Sequence[Item], features: dict[int, RandomFeatures] | None = None) -> Moments:
            out = Moments(features=features)
            lengths = token_lengths(items, encoder, train=False) if max_batch_tokens is not None else None
            # Under ``accelerate launch`` the batches are shared out (batch k to process k mod N) and
            # the sums all-reduced: every process gets the moments of all items.
            rank, processes = process_rank_and_count()
            for index, parts in enumerate(batch_parts(items, batch_size, max_batch_tokens, lengths)):
                if index % processes != rank:
                    continue
                for part in parts:
                    batch = to_device(encoder.batch(part, train=False), vlm.device)
                    out.add(tap.run(vlm.model, batch, opts["pool"]))
            out.all_reduce(vlm.device)
            return out

        was_training = vlm.model.training
        vlm.model.eval()
        try:
            with tap.tapped():
                recall, erasure = self._pairs(vlm, encoder, tap, forget, opts, batch_size, max_batch_tokens)
                retain_prompts = moments(retain_items)
                features = None
                if opts["lift"]:
                    # Standardised by the retain prompts' statistics, then the same prompts again, lifted.
                    features = {layer: RandomFeatures.draw(retain_prompts.mean(layer).float(),
                                                           retain_prompts.spread(layer), opts["lift"],
                                                           seed=seed * 1009 + layer)
                                for layer in opts["layers"]}
                    retain_prompts = moments(retain_items, features)
                forget_prompts = moments(forget_items, features)
        finally:
            vlm.model.train(was_training)
        return {"recall": recall, "erasure": erasure, "forget_prompts": forget_prompts, "retain_prompts": retain_prompts}

    @staticmethod
    def build_edit(stats: dict[str, "Moments"], opts: dict[str, Any], meta: dict[str, Any] | None = None) -> Steering:
        """The closed form per layer, from ``statistics``' moments (cheap: re-run it to try other options)."""
        recall, erasure = stats["recall"], stats["erasure"]
        forget_prompts, retain_prompts = stats["forget_prompts"], stats["retain_prompts"]
        matrices, layer_stats = {}, {}
        for layer in opts["layers"]:
            direction = erasure.mean(layer) - recall.mean(layer)
            projector = null_space_projector(retain_prompts.outer[layer] / retain_prompts.count,
                                             opts["null_energy"], opts["null_ratio"])
            matrices[layer] = steering_matrix(projector, forget_prompts.sum[layer], forget_prompts.outer[layer],
                                              forget_prompts.count, direction, opts["ridge"],
                                              retain_prompts.outer[layer] / retain_prompts.count,
                                              opts["retain_penalty"])
            layer_stats[str(layer)] = {"direction_norm": float(direction.norm()),
                                       "null_dim": int(round(float(torch.trace(projector)))),
                                       "forget_state_norm": float(forget_prompts.mean(layer).norm())}
        return Steering(matrices, opts["strength"], opts["decode"], {**(meta or {}), "layers": layer_stats},
                        opts.get("task_strengths"),
                        {layer: lift for layer, lift in forget_prompts.features.items() if layer in matrices},
                        opts.get("pool", "last"))

    def _pairs(self, vlm: VLM, encoder: Encoder, tap: LastTokenTap, forget: Sequence[Item], opts: dict[str, Any],
               batch_size: int, max_batch_tokens: int | None = None) -> tuple[Moments, Moments]:
        """Last-token states of recall pairs (true answer, PGD-strengthened image) and erasure pairs (refusal).

        PGD is per image (each image's gradient is its own sequence's), so splitting a batch into
        token-bounded parts (``max_batch_tokens``) changes nothing but the memory of each pass."""
        recall, erasure = Moments(second=False), Moments(second=False)
        refusals = [replace(item, answer=opts["refusal"]) for item in forget]
        for start in range(0, len(forget), batch_size):
            chunk, refused = forget[start:start + batch_size], refusals[start:start + batch_size]
            # One modality per batch, so pixel values belong to every row of the batch or to none.
            for modality in ("vqa", "qa"):
                rows = [k for k, item in enumerate(chunk) if item.modality == modality]
                if not rows:
                    continue
                lengths = None
                if max_batch_tokens is not None:  # the longer of the true and the refusal sequence
                    lengths = [max(a, b) for a, b in zip(token_lengths([chunk[k] for k in rows], encoder),
                                                         token_lengths([refused[k] for k in rows], encoder))]
                for part in batch_parts(rows, len(rows), max_batch_tokens, lengths)[0]:
                    true_batch = to_device(encoder.batch([chunk[k] for k in part], train=True), vlm.device)
                    refusal_batch = to_device(encoder.batch([refused[k] for k in part], train=True), vlm.device)
                    if "pixel_values" in true_batch and opts["pgd_steps"] > 0 and opts["pgd_eps"] > 0:
                        pixels = perturb_pixels(vlm.model, true_batch, opts["pgd_steps"], opts["pgd_eps"],
                                                opts["pgd_step_size"])
                        true_batch["pixel_values"] = pixels
                        refusal_batch["pixel_values"] = pixels  # same images, same order: only the answer differs
                    recall.add(tap.run(vlm.model, true_batch))
                    erasure.add(tap.run(vlm.model, refusal_batch))
        return recall, erasure

    @staticmethod
    def inference_prompts(items: Sequence[Item], forms: Sequence[str], renderer: McqRenderer, renderings: int = 1) -> list[Item]:
        """Inference-form prompts (no answer) of ``items`` in each form; ``renderings``
        multiple-choice versions of each item (options drawn afresh), so the statistics cover
        the option texts' variation and not one draw of it."""
        prompts: list[Item] = []
        for form in forms:
            if form == "qa":
                prompts += list(items)
            elif form in ("generation", "cloze"):  # MLLMU-Bench's generation / fill-in-the-blank prompts
                prompts += [prompt for prompt in (as_task_prompt(item, form) for item in items) if prompt]
            else:
                prompts += [renderer(item) for _ in range(renderings) for item in items if renderer.renderable(item)]
        return prompts


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"mllmeraser: {name} must be true or false, got {value!r}")


def _task_strengths(value: Any) -> dict[str, float]:
    """``{"cloze": 0.3}`` or ``"cloze=0.3,generation=0.2"`` (as ``-o task_strengths=...`` gives it)."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, str):
        pairs = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            task, sep, number = part.partition("=")
            if not sep:
                task, sep, number = part.partition(":")
            if not sep:
                raise ValueError(f"mllmeraser: task_strengths must be TASK=STRENGTH pairs separated by commas "
                                 f"(e.g. cloze=0.3,mcq=0.2), got {value!r}")
            pairs.append((task.strip(), number.strip()))
    else:
        raise ValueError(f"mllmeraser: task_strengths must be a mapping or 'TASK=STRENGTH,...', got {value!r}")
    out = {}
    for task, number in pairs:
        if task not in TASKS:
            raise ValueError(f"mllmeraser: task_strengths names unknown task {task!r}; tasks are {TASKS}")
        try:
            out[task] = float(number)
        except (TypeError, ValueError):
            raise ValueError(f"mllmeraser: task_strengths[{task!r}] must be a number, got {number!r}") from None
    return out
