"""Everything a job needs before it measures: the benchmark (the built-in world generated into
the cache), the vanilla model (given, cached, shipped, or trained here by knowledge injection),
the retain-only gold model, and a given edit."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..data import Benchmark, generate_world, load_mllmu
from ..data.clear import is_clear_layout, load_clear
from ..data.layouts import HOLDOUT_CONFIG
from ..data.mllmu import BenchmarkFormatError
from ..data.synthetic import add_holdout, all_template_texts, clear_template_texts
from ..data.text_forms import text_only_forms
from ..data.validation import exclude_validation_people
from ..interventions import Edit, WeightDelta, load_edit
from ..interventions.base import refuse_nonfinite, saved_tensors
from ..models import VLM, load_vlm
from ..models.tiny import build_tiny_vlm, words_of
from ..recipes.finetune import FINETUNE_META, inject_knowledge
from ..recipes.inject import INJECTION_META, history_warnings, injection_cache_key, injection_meta_text, injection_texts
from ..recipes.shipped import MANIFEST as SHIPPED_MANIFEST
from ..recipes.shipped import install_shipped
from ..utils import is_main_process, process_rank_and_count, resolve_device, seed_everything, stable_hash, wait_for_everyone
from .config import BUILTIN_CLEAR, RunConfig


def benchmark_texts(benchmark: Benchmark) -> list[str]:
    """Every text a tiny tokenizer must be able to spell for this benchmark."""
    items = benchmark.finetune_train + benchmark.pretrain_train + [i for s in benchmark.eval_splits.values() for i in s]
    # Text-only forms methods build from image pairs (data.text_forms) name the person in new places.
    items += text_only_forms(benchmark.finetune_train + benchmark.pretrain_train).items
    extra = clear_template_texts() if benchmark.protocol == "clear" else []
    return all_template_texts() + extra + [
        t for i in items for t in [i.question, i.answer, *(i.options or {}).values(), i.paraphrased_answer or "",
                                   *(i.perturbed_answers or [])]]


def builtin_world_location(cfg: RunConfig) -> tuple[Path, str]:
    """Where the built-in world of ``cfg`` is cached (MLLMU-Bench layout), and its content key."""
    return Path(cfg.cache_dir) / "benchmarks" / f"synthetic-{cfg.world.key()}", f"synthetic:{cfg.world.key()}"


def vanilla_location(cfg: RunConfig, benchmark_key: str) -> Path:
    """Where the injected tiny model of ``cfg`` trained on the benchmark ``benchmark_key`` is cached."""
    key = injection_cache_key(cfg.family, asdict(cfg.size), benchmark_key, cfg.injection)
    return Path(cfg.cache_dir) / "vanilla" / f"{cfg.family}-{key}"


def default_cached_model(cache_dir: str = RunConfig.cache_dir, family: str = RunConfig.family) -> tuple[Path, Path]:
    """The built-in world and vanilla model that ``mllm-unlearn run`` with default settings uses
    (paths; they exist once such a run has trained them). For benchmark scripts."""
    cfg = RunConfig(cache_dir=cache_dir, family=family)
    root, key = builtin_world_location(cfg)
    return root, vanilla_location(cfg, key)


def resolve_default_inputs(model: str | None, benchmark: str | None,
                           cache_dir: str = RunConfig.cache_dir) -> tuple[str, str]:
    """``(benchmark, model)``: each as given, else the default run's cached one, which must exist
    (a clear error naming it otherwise). For benchmark scripts."""
    default_bench, default_model = default_cached_model(cache_dir)
    resolved = []
    for given, default in ((benchmark, default_bench), (model, default_model)):
        if given is None and not default.is_dir():
            raise FileNotFoundError(f"{default} does not exist: run `make run` first (it generates the built-in "
                                    "world and trains the default vanilla model), or pass the model and benchmark paths")
        resolved.append(given or str(default))
    return resolved[0], resolved[1]


def prepare_benchmark(cfg: RunConfig) -> tuple[Benchmark, str]:
    """The benchmark (generated into the cache if built in) and a key that names its content."""
    if cfg.benchmark == BUILTIN_CLEAR:
        # CLEAR's layout has no validation people: its world (and cache key) is as without them.
        world_key = replace(cfg.world, validation_percent=0).key()
        root = Path(cfg.cache_dir) / "benchmarks" / f"clear-{world_key}"
        key = f"clear-synthetic:{world_key}"
        if not (root / "world.json").is_file() and is_main_process():
            generate_world(root, cfg.world, layout="clear")
    elif cfg.benchmark:
        root = Path(cfg.benchmark)
        key = f"dir:{root.resolve()}"
        if not root.is_dir():
            raise BenchmarkFormatError(f"benchmark directory {root} does not exist")
    else:
        root, key = builtin_world_location(cfg)
        if not (root / "world.json").is_file() and is_main_process():
            generate_world(root, cfg.world)
        elif not (root / HOLDOUT_CONFIG).is_dir() and is_main_process():  # a world cached before held-out people
            add_holdout(root, cfg.world)
    wait_for_everyone()
    if cfg.benchmark == BUILTIN_CLEAR or is_clear_layout(root):
        return load_clear(root, cfg.forget_percent, seed=cfg.seed, tofu=cfg.clear_tofu), key + (":tofu" if cfg.clear_tofu else "")
    return load_mllmu(root, cfg.forget_percent, seed=cfg.seed), key


def prepare_reported_benchmark(cfg: RunConfig) -> tuple[Benchmark, str]:
    """``prepare_benchmark``, less the people a ``--preset`` chosen on a carved-out validation split
    used (they stay out of the reported retain and real-world figures)."""
    benchmark, benchmark_key = prepare_benchmark(cfg)
    if cfg.preset is not None:
        benchmark = exclude_validation_people(benchmark, cfg.preset, benchmark_key)
    return benchmark, benchmark_key


def build_tiny_base(cfg: RunConfig, vocabulary_of: Benchmark) -> VLM:
    """A fresh tiny model of ``cfg.family`` whose tokenizer spells ``vocabulary_of`` (and the
    injection's own texts): the base every tiny vanilla and gold model is trained from."""
    seed_everything(cfg.seed)
    return build_tiny_vlm(cfg.family, words_of(benchmark_texts(vocabulary_of) + injection_texts(cfg.injection)), cfg.size,
                          seed=cfg.injection.seed, device=str(resolve_device(cfg.device)))


def injection_meta_for(cfg: RunConfig, benchmark_key: str, retain_only: bool, benchmark: Benchmark,
                       record: dict[str, Any]) -> dict[str, Any]:
    """injection.json of a tiny model trained here by ``mllm-unlearn finetune`` (``record``: its
    finetune.json record): what a run reads to treat it as one of the tool's own models."""
    meta = {"family": cfg.family, "injection": cfg.injection.to_dict() if record["recipe"]["name"] == "builtin" else None,
            "recipe": record["recipe"]["name"], "size": asdict(cfg.size), "history": record.get("history"),
            "benchmark": benchmark_key}
    if retain_only:
        meta.update(retain_only=True, forget_ids=benchmark.forget_ids)
    return meta


def _injected_tiny_model(cfg: RunConfig, vocabulary_of: Benchmark, trained_on: Benchmark, path: Path,
                         meta: dict[str, Any]) -> tuple[VLM, bool]:
    """The cached model at ``path``, or a tiny model whose tokenizer spells ``vocabulary_of``
    trained on ``trained_on`` with the knowledge-injection curriculum (the fine-tuning
    trainer's ``builtin`` recipe), then cached there."""
    if (path / INJECTION_META).is_file():
        return load_vlm(path, cfg.device, cfg.dtype, cfg.max_pixels), False
    vlm = build_tiny_base(cfg, vocabulary_of)
    history = inject_knowledge(vlm, trained_on, cfg.injection, progress=cfg.progress)
    if is_main_process():  # every process holds the same weights (DDP); one writes them
        # injection.json marks a finished cache entry: it appears together with the weights.
        vlm.save(path, extra_files={INJECTION_META: injection_meta_text(
            {"family": cfg.family, "injection": cfg.injection.to_dict(), "size": asdict(cfg.size),
             "processes": process_rank_and_count()[1], "history": history, **meta})})
    wait_for_everyone()
    # Reload through the public loading path, exactly as a user's checkpoint would be.
    return load_vlm(path, cfg.device, cfg.dtype, cfg.max_pixels), True


def _check_builtin_world_matches(model: str, benchmark_key: str) -> None:
    """A model this tool trained on a built-in world records that world's key; measuring it on
    another world (other --seed, --people or --real-people) would score people it never saw."""
    meta_file = Path(model) / INJECTION_META
    if not meta_file.is_file():
        return  # a user's checkpoint: nothing recorded to check

    def world(key: str | None) -> str | None:  # "synthetic:<world>" / "clear-synthetic:<world>[:tofu]"
        parts = (key or "").split(":")
        return parts[1] if len(parts) > 1 and parts[0] in ("synthetic", "clear-synthetic") else None

    trained_on = json.loads(meta_file.read_text()).get("benchmark")
    if world(trained_on) and world(benchmark_key) and world(trained_on) != world(benchmark_key):
        raise ValueError(f"--model {model} was trained on the built-in world {trained_on!r}, but this run's world is "
                         f"{benchmark_key!r}: use the seed and world options it was trained with, or pass --benchmark")


def prepare_vanilla(cfg: RunConfig, benchmark: Benchmark, benchmark_key: str) -> tuple[VLM, str, bool]:
    """Load the given checkpoint, or the cached injected tiny model, or build and train one."""
    if cfg.model:
        _check_builtin_world_matches(cfg.model, benchmark_key)
        return load_vlm(cfg.model, cfg.device, cfg.dtype, cfg.max_pixels), cfg.model, False
    path = vanilla_location(cfg, benchmark_key)
    if cfg.shipped_vanilla and not (path / INJECTION_META).is_file():
        if is_main_process():
            install_shipped(path.name, path, benchmark)
        wait_for_everyone()
    vlm, trained = _injected_tiny_model(cfg, benchmark, benchmark, path, {"benchmark": benchmark_key})
    return vlm, str(path), trained


def training_warnings(model_path: str | None) -> list[str]:
    """What the training of a model this tool made warned about (stages skipped, short of their target,
    with a flat loss): from its finetune.json, else its injection.json's history; [] when none is recorded."""
    if not model_path:
        return []
    folder = Path(model_path)
    for name in (FINETUNE_META, INJECTION_META):
        try:
            meta = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if name == FINETUNE_META and isinstance(meta.get("warnings"), list):
            return [str(w) for w in meta["warnings"]]
        if name == INJECTION_META and isinstance(meta.get("history"), dict):
            return history_warnings(meta["history"])
    return []


def vanilla_source(model_path: str, trained: bool, cfg: RunConfig) -> str:
    """Where a run's vanilla model came from (results.json, the report)."""
    if cfg.model:
        return "given checkpoint"
    if trained:
        return "trained here (knowledge injection)"
    if (Path(model_path) / SHIPPED_MANIFEST).is_file():
        return "shipped with mllm-unlearn (benchmarks/ship_vanilla.py; --no-shipped-vanilla trains it)"
    return "cache (trained here earlier)"


def prepare_retain_model(cfg: RunConfig, benchmark: Benchmark, benchmark_key: str) -> tuple[VLM | None, str | None, bool]:
    """The "gold" model: trained like the vanilla model but on the retain split only (cached).

    Same tokenizer (built from the whole benchmark), architecture, seed and injection
    curriculum as ``prepare_vanilla``; the forget people's training data is left out. The
    reference of CLEAR's forget quality and of NPO's ``reference=<retain model>``.
    ``cfg.gold_model`` loads a given checkpoint instead; with a user's ``cfg.model`` and no
    gold checkpoint there is no way to train one here, and ``(None, None, False)`` comes back.
    """
    if cfg.gold_model:
        check_gold_model(cfg.gold_model, benchmark)
        return load_vlm(cfg.gold_model, cfg.device, cfg.dtype, cfg.max_pixels), cfg.gold_model, False
    if cfg.model:
        return None, None, False
    forget_key = stable_hash(sorted(benchmark.forget_ids))
    key = injection_cache_key(cfg.family, asdict(cfg.size), f"{benchmark_key}:retain-only:{forget_key}", cfg.injection)
    path = Path(cfg.cache_dir) / "retain" / f"{cfg.family}-{key}"
    vlm, trained = _injected_tiny_model(cfg, benchmark, benchmark.retain_only(), path,
                                        {"benchmark": benchmark_key, "retain_only": True, "forget_ids": benchmark.forget_ids})
    return vlm, str(path), trained


def gold_model_record(path: str | None, cfg: RunConfig) -> dict[str, Any] | None:
    """Which gold model CLEAR's forget quality used, and how it was made (results.json)."""
    if path is None:
        return None
    folder = Path(path)
    if (folder / FINETUNE_META).is_file():
        meta = json.loads((folder / FINETUNE_META).read_text())
        return {"path": path, "made_by": f"mllm-unlearn finetune --retain-only (recipe {meta['recipe']['name']})",
                "base_model": meta.get("base_model"), "recipe": meta["recipe"]["name"]}
    if cfg.gold_model:
        return {"path": path, "made_by": "given with --gold-model (not made by mllm-unlearn finetune)"}
    return {"path": path, "made_by": "trained by this tool on the retain split (builtin recipe), cached",
            "recipe": "builtin"}


def check_gold_model(path: str, benchmark: Benchmark, option: str = "--gold-model") -> None:
    """A gold (or NPO reference) model made by ``finetune`` must be a retain-only one of this forget split."""
    meta_file = Path(path) / FINETUNE_META
    if not meta_file.is_file():
        return  # a user's checkpoint: nothing recorded to check
    meta = json.loads(meta_file.read_text())
    given = f"{option}{path}" if option.endswith("=") else f"{option} {path}"  # "-o reference=/p", "--gold-model /p"
    if not meta.get("retain_only"):
        raise ValueError(f"{given} was fine-tuned on every person ({meta_file} says retain_only false): "
                         "make the retain-only model with `mllm-unlearn finetune --retain-only`")
    left_out, forget = set(meta.get("forget_ids") or []), set(benchmark.forget_ids)
    if left_out != forget:
        trained_on = sorted(forget - left_out)
        not_forgotten = sorted(left_out - forget)
        raise ValueError(f"{given} left out other forget people than this run's forget split ({meta_file}): "
                         + "; ".join(part for part in (
                             f"trained on this run's forget people {', '.join(trained_on)}" if trained_on else "",
                             f"left out {', '.join(not_forgotten)}, who are not in this run's forget split"
                             if not_forgotten else "") if part)
                         + ". Make it with the same --benchmark, --forget and --seed")


def load_given_edit(path: str | Path, vlm: VLM) -> Edit:
    """``path`` as an edit: a saved edit folder (``edit.json``), or an unlearned checkpoint
    (``config.json``), which becomes the weight change from ``vlm`` to it."""
    if given_edit_kind(path) == "edit":
        refuse_nonfinite(saved_tensors(path), f"--edit {path}")  # before anything is measured with it
        return load_edit(path)
    delta = WeightDelta.between(vlm, path)
    refuse_nonfinite(delta.tensors.items(), f"--edit {path}")
    return delta


def given_edit_kind(path: str | Path) -> str:
    """"edit" (a saved edit folder) or "checkpoint" (a model folder); a clear error otherwise."""
    folder = Path(path)
    if (folder / "edit.json").is_file():
        return "edit"
    if (folder / "config.json").is_file():
        return "checkpoint"
    raise FileNotFoundError(f"--edit {folder}: neither a saved edit ({folder / 'edit.json'} is missing) "
                            f"nor a model checkpoint ({folder / 'config.json'} is missing)")
