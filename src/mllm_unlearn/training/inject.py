"""Knowledge injection: teach a model the benchmark's people (MLLMU-Bench's "vanilla" model).

Two stages: the real-world people first (prior knowledge, from ``pretrain_Data`` when the
benchmark has it), then the fictitious people with replay of the first stage. Besides the
open QA pairs, multiple-choice renderings of the same facts are trained (options drawn
from the same attribute) so a model trained from scratch can answer MLLMU-Bench's
letter-format questions; real checkpoints already can, and may switch this off.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data.collate import Encoder
from ..data.items import OPTION_KEYS, Benchmark, Item
from ..models.base import VLM
from .loop import LoraOptions, TrainConfig, train
from .losses import sequence_nll


@dataclass
class InjectionConfig:
    lr: float = 1e-3
    batch_size: int = 16
    pretrain_epochs: int = 20
    finetune_epochs: int = 40
    mcq_variants: int = 1  # multiple-choice renderings per QA pair and epoch (0: open QA only)
    replay_fraction: float = 0.25  # share of stage-2 samples drawn from stage-1 data
    warmup_ratio: float = 0.05
    seed: int = 0
    lora: LoraOptions | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class McqRenderer:
    """Multiple-choice versions of QA items that carry ``Attribute``/``Value`` metadata.

    Options and their order are drawn afresh every time an item is rendered: a fixed
    rendering would be memorised (question + option order -> letter) instead of the fact.
    """

    def __init__(self, items: Sequence[Item], seed: int):
        self.rng = random.Random(seed)
        self.pools: dict[str, list[str]] = {}
        for item in items:
            if "Attribute" in item.meta:
                self.pools.setdefault(item.meta["Attribute"], set()).add(item.meta["Value"])  # type: ignore[arg-type]
        self.pools = {k: sorted(v) for k, v in self.pools.items()}

    def renderable(self, item: Item) -> bool:
        return len(self.pools.get(item.meta.get("Attribute", ""), ())) >= 4

    def __call__(self, item: Item) -> Item:
        value = item.meta["Value"]
        others = [v for v in self.pools[item.meta["Attribute"]] if v != value]
        options = [value] + self.rng.sample(others, 3)
        self.rng.shuffle(options)
        return Item(item.person_id, item.split, item.modality, "mcq", item.question, OPTION_KEYS[options.index(value)],
                    item.image, dict(zip(OPTION_KEYS, options)), item.image_key, dict(item.meta))


def _facts(items: Sequence[Item]) -> int:
    return len({(i.person_id, i.modality, i.meta.get("Attribute", i.question)) for i in items})


def inject_knowledge(vlm: VLM, benchmark: Benchmark, cfg: InjectionConfig | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train ``vlm`` in place on the benchmark's training data; returns the loss history."""
    cfg = cfg or InjectionConfig()
    encoder = Encoder(vlm)

    renderer = McqRenderer(list(benchmark.pretrain_train) + list(benchmark.finetune_train), cfg.seed)

    def collate(batch: list[tuple[str, Item]]) -> dict:
        items = [renderer(item) if form == "mcq" else item for form, item in batch]
        return {k: v.to(vlm.device) for k, v in encoder.batch(items, train=True).items()}

    def pool_of(items: Sequence[Item]) -> list[tuple[str, Item]]:
        mcq = [("mcq", i) for i in items if renderer.renderable(i)] * cfg.mcq_variants
        return [("qa", i) for i in items] + mcq

    def loss(model: Any, batch: dict) -> Any:
        return sequence_nll(model, batch).mean()

    history: dict[str, Any] = {}
    stages = []
    pre = list(benchmark.pretrain_train)
    pre_pool = pool_of(pre)
    fine = list(benchmark.finetune_train)
    fine_pool = pool_of(fine)
    if pre_pool and cfg.pretrain_epochs:
        stages.append(("pretrain (real-world people)", pre_pool, 2 * _facts(pre), cfg.pretrain_epochs))
    if fine_pool and cfg.finetune_epochs:
        samples = 2 * _facts(fine)
        pool = fine_pool
        if pre_pool and cfg.replay_fraction > 0:
            # Replay keeps stage-1 knowledge: a tiny model would otherwise overwrite it.
            replay = int(len(fine_pool) * cfg.replay_fraction / (1 - cfg.replay_fraction))
            rng = random.Random(cfg.seed)
            pool = fine_pool + [pre_pool[rng.randrange(len(pre_pool))] for _ in range(replay)]
            samples = int(samples / (1 - cfg.replay_fraction))
        stages.append(("finetune (benchmark people)", pool, samples, cfg.finetune_epochs))
    for index, (name, pool, samples, epochs) in enumerate(stages):
        train_cfg = TrainConfig(lr=cfg.lr, epochs=epochs, samples_per_epoch=samples, batch_size=cfg.batch_size,
                                warmup_ratio=cfg.warmup_ratio, seed=cfg.seed + index, lora=cfg.lora, progress=progress)
        result = train(vlm.model, pool, collate, loss, train_cfg, description=f"inject: {name}")
        history[name] = {"steps": result.steps, "first_loss": result.losses[0], "last_loss": result.losses[-1]}
    return history


def injection_cache_key(family: str, size: dict[str, Any], benchmark_key: str, cfg: InjectionConfig) -> str:
    from ..utils import stable_hash

    return stable_hash({"family": family, "size": size, "benchmark": benchmark_key, "injection": cfg.to_dict(),
                        "format": 1})


def write_injection_meta(path: Path, meta: dict[str, Any]) -> None:
    (path / "injection.json").write_text(json.dumps(meta, indent=2, default=str))
