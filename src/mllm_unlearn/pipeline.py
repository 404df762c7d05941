"""The whole job: benchmark -> vanilla model (cached) -> evaluate -> unlearn (or a given edit) ->
evaluate -> report; and exporting an unlearned checkpoint."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .data import Benchmark, WorldConfig, generate_world, load_mllmu
from .data.clear import is_clear_layout, load_clear
from .data.mllmu import HOLDOUT_CONFIG, BenchmarkFormatError
from .data.synthetic import add_holdout, all_template_texts, clear_template_texts
from .data.text_forms import text_only_forms
from .eval import EvalConfig, Evaluator
from .eval.attacks import AttackConfig, run_battery
from .eval.clear import ClearEvalConfig, ClearEvaluator
from .eval.generalisation import generalisation_breakdown
from .eval.knowledge import DEFAULT_MIN_KNOWLEDGE, KnowledgeCheckFailed, failure_message, knowledge_check
from .eval.mia import MIAConfig, membership_inference, mia_items
from .eval.relearn import RelearnConfig, RelearnNotApplicable, relearn_attack, resolve_relearn
from .eval.tradeoff import tradeoff
from .interventions import CompositeEdit, Edit, WeightDelta, load_edit
from .methods import MethodConfig, get_method
from .methods.base import UnlearningDiverged
from .methods.defaults import DEFAULT_METHOD
from .models import VLM, TinySize, load_vlm
from .models.tiny import build_tiny_vlm, words_of
from .report import render_html, render_markdown
from .shipped import MANIFEST as SHIPPED_MANIFEST
from .shipped import install_shipped
from .sweep import preset_record
from .training.finetune import FINETUNE_META
from .training.inject import (INJECTION_META, InjectionConfig, inject_knowledge, injection_cache_key, injection_meta_text,
                              injection_texts)
from .utils import (atomic_write_text, dtype_name, init_distributed, is_main_process, peak_memory_mb, process_rank_and_count,
                    resolve_device, seed_everything, stable_hash, wait_for_everyone)

BUILTIN_CLEAR = "clear"  # ``--benchmark clear``: the built-in world in CLEAR's layout
RETAIN_REFERENCE = "retain-finetuned"  # ``-o reference=retain-finetuned``: the tool's cached retain-only model


@dataclass
class RunConfig:
    name: str = "default"
    family: str = "llava"
    model: str | None = None  # a local checkpoint already holding the knowledge (skips injection)
    benchmark: str | None = None  # an MLLMU-Bench or CLEAR directory, or "clear"; default: the built-in world
    clear_tofu: bool = False  # CLEAR: train on the ``+tofu`` configs (captions + TOFU text QA)
    gold_model: str | None = None  # CLEAR: a checkpoint fine-tuned on the retain split (else trained here)
    forget_percent: int = 10
    method: str = DEFAULT_METHOD  # methods.defaults: chosen from the validation sweeps
    # A saved edit (a run's ``edit`` folder) or an unlearned checkpoint of ``model``: evaluated
    # (and attacked) in place of unlearning, so ``method``/``method_cfg`` are not used.
    edit: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto: the checkpoint's own (models.base.checkpoint_dtype); float32, bfloat16, float16
    max_pixels: int | None = None  # Qwen families: cap on each image's pixels (default: the checkpoint's own)
    runs_dir: str = "runs"
    cache_dir: str = ".cache/mllm_unlearn"
    world: WorldConfig = field(default_factory=WorldConfig)
    size: TinySize = field(default_factory=TinySize)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    # The method's settings as given; None: the preset for the model (``tiny`` for a model this
    # tool built, ``paper`` otherwise; methods.defaults), with ``method_overrides`` on top.
    method_cfg: MethodConfig | None = field(default_factory=MethodConfig)
    method_overrides: dict[str, Any] = field(default_factory=dict)  # MethodConfig fields; "extra" merged
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Robustness evaluations (None switches one off): membership inference before and after
    # unlearning, and the relearning attack on the unlearned model (its lora "auto" and lr None
    # resolve by who built the model: eval.relearn.resolve_relearn).
    mia: MIAConfig | None = field(default_factory=MIAConfig)
    relearn: RelearnConfig | None = field(default_factory=RelearnConfig)
    # The attack battery and forgetting certificate (eval/attacks; None: off, ``--attacks none``).
    attacks: AttackConfig | None = field(default_factory=AttackConfig)
    progress: bool = True
    # Start from the vanilla model shipped with the package when its key is this run's and the cache
    # lacks it (shipped.py: the default run's, trained by this code; False: train it here).
    shipped_vanilla: bool = True
    # A preset file's content (``sweep.load_preset``): recorded in results.json; a preset chosen on
    # a carved-out validation split takes those people out of the reported splits.
    preset: dict[str, Any] | None = None
    # Knowledge check before unlearning (eval/knowledge.py): the vanilla model's forget-split
    # classification accuracy must reach chance + ``min_knowledge`` points in every modality the
    # method targets, else the run stops; ``allow_unknown`` goes on (and the report says so).
    min_knowledge: float = DEFAULT_MIN_KNOWLEDGE
    allow_unknown: bool = False


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


def default_cached_model(cache_dir: str = ".cache/mllm_unlearn", family: str = "llava") -> tuple[Path, Path]:
    """The built-in world and vanilla model that ``mllm-unlearn run`` with default settings uses
    (paths; they exist once such a run has trained them). For benchmark scripts."""
    cfg = RunConfig(cache_dir=cache_dir, family=family)
    root, key = builtin_world_location(cfg)
    return root, vanilla_location(cfg, key)


def resolve_default_inputs(model: str | None, benchmark: str | None,
                           cache_dir: str = ".cache/mllm_unlearn") -> tuple[str, str]:
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
        from .sweep import exclude_validation_people

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
    if not meta.get("retain_only"):
        raise ValueError(f"{option} {path} was fine-tuned on every person ({meta_file} says retain_only false): "
                         "make the retain-only model with `mllm-unlearn finetune --retain-only`")
    if sorted(meta.get("forget_ids") or []) != sorted(benchmark.forget_ids):
        raise ValueError(f"{option} {path} left out other forget people than this run's forget split "
                         f"({meta_file}): make it with the same --benchmark, --forget and --seed")


def clear_eval_config(cfg: EvalConfig) -> ClearEvalConfig:
    """CLEAR's evaluation options from the run's: batch, generation length (CLEAR's own 300
    unless given), item cap, seed; ROUGE only when the ``generation`` task is asked for."""
    length = {"max_new_tokens": cfg.max_new_tokens} if cfg.max_new_tokens else {}
    return ClearEvalConfig(batch_size=cfg.batch_size, max_items_per_task=cfg.max_items_per_group,
                           rouge="generation" in cfg.tasks, seed=cfg.seed, progress=cfg.progress, **length)


# Installed but not imported by a run (test fixtures): recorded when present, to reproduce a run's stack.
OPTIONAL_RECORDED_PACKAGES = ("datasets",)


def versions() -> dict[str, str]:
    """The versions of what a run's figures depend on (results.json's ``config.versions``): the
    modules as imported (torch with its build tag, e.g. ``+cpu``), and optional packages if installed."""
    from importlib import metadata

    import accelerate
    import numpy
    import peft
    import safetensors
    import tokenizers
    import transformers

    from . import __version__

    found = {"mllm_unlearn": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
             "peft": peft.__version__, "accelerate": accelerate.__version__, "safetensors": safetensors.__version__,
             "numpy": numpy.__version__}
    for name in OPTIONAL_RECORDED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def load_given_edit(path: str | Path, vlm: VLM) -> Edit:
    """``path`` as an edit: a saved edit folder (``edit.json``), or an unlearned checkpoint
    (``config.json``), which becomes the weight change from ``vlm`` to it."""
    if given_edit_kind(path) == "edit":
        return load_edit(path)
    return WeightDelta.between(vlm, path)


def given_edit_kind(path: str | Path) -> str:
    """"edit" (a saved edit folder) or "checkpoint" (a model folder); a clear error otherwise."""
    folder = Path(path)
    if (folder / "edit.json").is_file():
        return "edit"
    if (folder / "config.json").is_file():
        return "checkpoint"
    raise FileNotFoundError(f"--edit {folder}: neither a saved edit ({folder / 'edit.json'} is missing) "
                            f"nor a model checkpoint ({folder / 'config.json'} is missing)")


UNLEARNING_FILE = "unlearning.json"  # provenance written beside an exported checkpoint's weights


def export_unlearned_model(vlm: VLM, edit: Edit, out: str | Path, base_model: str | None = None) -> Path:
    """Bake ``edit`` into ``vlm`` (in place) and save a normal checkpoint at ``out`` that
    ``from_pretrained`` loads, with ``unlearning.json`` saying what was removed and how.
    A steering edit acts on activations and cannot be baked: ValueError, nothing written."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder for the unlearned checkpoint")
    if not edit.bakeable:
        raise ValueError(f"a {edit.kind} edit acts on each input's activations and cannot be baked into weights; "
                         "apply it at inference with load_edit(...).apply(vlm) instead of exporting a checkpoint")
    edit.bake(vlm)
    provenance = {"edit_kind": edit.kind, "method": edit.meta.get("method"), "base_model": base_model,
                  "edit_meta": edit.meta, "versions": versions()}
    vlm.save(out, extra_files={UNLEARNING_FILE: json.dumps(provenance, indent=2, default=str)})
    return out


def export_peft_adapter(edit: Edit, out: str | Path, base_model: str | None = None) -> Path:
    """Write a LoRA edit (``LowRankDelta``) as a standard peft adapter folder at ``out``
    (``PeftModel.from_pretrained(base, out)``), with ``unlearning.json`` beside it. Other edits,
    or a LoRA edit combined with other changes (MIP-Editor's pruning), cannot be an adapter:
    ValueError naming what is there, nothing written."""
    from .interventions import LowRankDelta

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder for the adapter")
    if not isinstance(edit, LowRankDelta):
        kinds = [p.kind for p in edit.parts] if isinstance(edit, CompositeEdit) else [edit.kind]
        raise ValueError(f"only a LoRA edit (low_rank_delta, from a run with --lora) exports as a peft adapter; this "
                         f"edit is {' + '.join(kinds)}: export it as a checkpoint instead (without --peft-adapter)")
    edit.export_peft_adapter(out, base_model=base_model)
    provenance = {"edit_kind": edit.kind, "method": edit.meta.get("method"), "base_model": base_model,
                  "edit_meta": edit.meta, "versions": versions()}
    (out / UNLEARNING_FILE).write_text(json.dumps(provenance, indent=2, default=str))
    return out


def model_built_here(cfg: RunConfig) -> bool:
    """Whether this tool built the run's model: trained in this run (no ``--model``) or a
    checkpoint it saved (``injection.json`` beside the weights). Picks presets and the attack's mode."""
    return cfg.model is None or (Path(cfg.model) / INJECTION_META).is_file()


def model_family_for_presets(cfg: RunConfig) -> str:
    """The tiny model's family, which picks its own sweep-chosen preset values where derived: the
    family a checkpoint this tool built recorded (``injection.json``), else the run's ``family``."""
    if cfg.model is not None:
        try:
            recorded = json.loads((Path(cfg.model) / INJECTION_META).read_text()).get("family")
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, str):
            return recorded
    return cfg.family


def preset_choice_family(cfg: RunConfig) -> str | None:
    """Which family's sweeps chose the run's tiny-preset values (``methods/tiny_presets.json``)."""
    from .methods.defaults import swept_choice_family

    return swept_choice_family(cfg.method, model_family_for_presets(cfg))


def resolve_method_config(cfg: RunConfig) -> tuple[MethodConfig, str]:
    """The method's settings and where they came from: ``given`` (``cfg.method_cfg`` set), else
    the preset for the model (``tiny``/``paper``), then a ``--preset`` file's values
    (``cfg.preset``), with ``cfg.method_overrides`` on top."""
    from .methods.defaults import apply_overrides, method_preset, preset_name_for

    if cfg.method_cfg is not None:
        return apply_overrides(cfg.method_cfg, cfg.method_overrides), "given"
    preset = preset_name_for(model_built_here(cfg))
    method_cfg = method_preset(cfg.method, preset, seed=cfg.seed, family=model_family_for_presets(cfg))
    if cfg.preset is not None:  # a preset file's values (a sweep's choice) on top of the model's preset
        from .methods.search_spaces import apply_values

        method_cfg = apply_values(method_cfg, cfg.preset["values"], source=f"--preset {cfg.preset.get('path')}")
    return apply_overrides(method_cfg, cfg.method_overrides), preset


STAGE_PENDING = "not run yet: the run stopped before this stage finished (results.json is rewritten after each stage)"


def _write_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    """results.json and the reports, each replaced atomically (main process only)."""
    if is_main_process():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
        atomic_write_text(run_dir / "report.md", render_markdown(results))
        atomic_write_text(run_dir / "report.html", render_html([results]))


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run everything and write ``runs/<name>/results.json`` and ``report.md``; returns the results.

    Under ``accelerate launch`` every process runs this: training is data-parallel, evaluation
    items are shared out and gathered, and only the main process writes files.
    """
    from .training import sharding

    # Before accelerate's state exists: DeepSpeed refused, accelerate's FSDP flag taken over (FSDP2).
    sharding.refuse_deepspeed(f"mllm-unlearn run --method {cfg.method}")
    # The CLI leaves method_cfg to be resolved below (preset by model) and puts --shard in the overrides.
    requested = cfg.method_cfg.shard if cfg.method_cfg is not None else cfg.method_overrides.get("shard")
    shard = sharding.claim_accelerate_fsdp(requested)
    init_distributed(cpu=resolve_device(cfg.device).type == "cpu")
    built_here = model_built_here(cfg)
    preset = None  # a given --edit trains nothing: no hyperparameters to choose
    if cfg.edit is None:
        method_config, preset = resolve_method_config(cfg)
        if shard:
            method_config = replace(method_config, shard=shard)
        cfg = replace(cfg, method_cfg=method_config, method_overrides={})
    relearn_cfg = resolve_relearn(replace(cfg.relearn, seed=cfg.seed), built_here) if cfg.relearn else None
    if cfg.edit is None:
        method = get_method(cfg.method)  # fail on a bad name or option before any work
        method.check_options(cfg.method_cfg)
    else:
        given_edit_kind(cfg.edit)  # a bad path fails before any work
    if cfg.max_pixels is not None:  # refused for LLaVA before any work
        from .models import adapter_for_checkpoint, adapter_for_family

        (adapter_for_checkpoint(cfg.model) if cfg.model else adapter_for_family(cfg.family)).check_max_pixels(cfg.max_pixels)
    protocol = getattr(cfg.eval, "protocol", "ours")
    if protocol != "ours" and (cfg.benchmark == BUILTIN_CLEAR or (cfg.benchmark and is_clear_layout(cfg.benchmark))):
        raise ValueError(f"--protocol {protocol} is MLLMU-Bench's evaluation; a CLEAR benchmark is evaluated "
                         "with CLEAR's own protocol (leave --protocol out)")
    run_dir = Path(cfg.runs_dir) / cfg.name
    timings: dict[str, float] = {}

    start = time.perf_counter()
    benchmark, benchmark_key = prepare_reported_benchmark(cfg)
    timings["benchmark"] = time.perf_counter() - start
    given_reference = cfg.method_cfg.extra.get("reference") if cfg.edit is None else None
    if isinstance(given_reference, str) and given_reference not in ("vanilla", RETAIN_REFERENCE):
        check_gold_model(given_reference, benchmark, option="-o reference=")  # before any training or evaluation

    start = time.perf_counter()
    vlm, model_path, trained = prepare_vanilla(cfg, benchmark, benchmark_key)
    timings["knowledge injection" if trained else "load vanilla model"] = time.perf_counter() - start
    given_edit = None
    if cfg.edit is not None:
        start = time.perf_counter()
        given_edit = load_given_edit(cfg.edit, vlm)
        given_edit.apply(vlm).remove()  # an edit of another model fails here, before any evaluation
        timings["load edit"] = time.perf_counter() - start

    gold: dict[str, Any] | None = None
    gold_path = None
    clear = benchmark.protocol == "clear"
    if clear:
        start = time.perf_counter()
        gold_vlm, gold_path, gold_trained = prepare_retain_model(cfg, benchmark, benchmark_key)
        timings["train gold model (retain only)" if gold_trained else "load gold model"] = time.perf_counter() - start
        gold_evaluator = None
        if gold_vlm is not None:
            start = time.perf_counter()
            gold_evaluator = ClearEvaluator(gold_vlm, clear_eval_config(cfg.eval))
            gold = gold_evaluator.evaluate(benchmark)
            timings["evaluate gold"] = time.perf_counter() - start
        evaluator: Any = ClearEvaluator(vlm, clear_eval_config(cfg.eval), share_prompts_with=gold_evaluator)
        del gold_vlm, gold_evaluator  # only the gold model's results are needed from here on
        start = time.perf_counter()
        vanilla = evaluator.evaluate(benchmark, gold=gold)
    else:
        evaluator = Evaluator(vlm, EvalConfig(**{**asdict(cfg.eval), "image_swap_check": True}))
        start = time.perf_counter()
        vanilla = evaluator.evaluate(benchmark)
    timings["evaluate vanilla"] = time.perf_counter() - start
    # Before any unlearning: a model that never knew the forget people has nothing to forget.
    targeted = method.target_modalities if cfg.edit is None else ("vqa", "qa")
    knowledge = knowledge_check(vanilla, benchmark.protocol, targeted, cfg.min_knowledge, cfg.allow_unknown)
    if knowledge.get("passed") is False:
        if not cfg.allow_unknown:
            raise KnowledgeCheckFailed(failure_message(knowledge))
        if is_main_process():
            import sys

            print(f"warning: {failure_message(knowledge)} Going on (--allow-unknown).", file=sys.stderr)

    if cfg.method_cfg is not None and cfg.method_cfg.gradient_checkpointing is None:  # resolved here, so results.json records it
        cfg = replace(cfg, method_cfg=replace(cfg.method_cfg, gradient_checkpointing=not built_here))
    method_cfg = cfg.method_cfg
    reference_path = None
    if cfg.edit is None and method_cfg.extra.get("reference") == RETAIN_REFERENCE:
        # A reference model trained without the forget people (NPO's option), trained once and cached.
        start = time.perf_counter()
        reference_vlm, reference_path, reference_trained = prepare_retain_model(cfg, benchmark, benchmark_key)
        if reference_path is None:
            raise ValueError(f"reference={RETAIN_REFERENCE}: with --model the tool cannot train a retain-only model; "
                             "give one with --gold-model or pass its path as the reference")
        del reference_vlm
        timings["train retain-only reference" if reference_trained else "load retain-only reference"] = \
            time.perf_counter() - start
        method_cfg = replace(method_cfg, extra={**method_cfg.extra, "reference": reference_path})
    elif isinstance(given_reference, str) and given_reference != "vanilla":
        reference_path = given_reference  # a given checkpoint (e.g. `finetune --retain-only`): recorded

    seed_everything(cfg.seed)
    start = time.perf_counter()
    if given_edit is not None:
        edit = given_edit
        method_name = str(edit.meta.get("method") or edit.kind)
    else:
        retain = benchmark.retain_train + (benchmark.prior_knowledge() if method.uses_prior_knowledge else [])
        try:
            edit = method.unlearn(vlm, benchmark.forget_train, retain, method_cfg)
        except UnlearningDiverged as error:
            if is_main_process():
                error.last_good.save(run_dir / "edit-last-good")
            raise UnlearningDiverged(f"{error} The edit of the last finite step is saved in "
                                     f"{run_dir / 'edit-last-good'}.", error.last_good) from error
        method_name = cfg.method
        timings[f"unlearn ({cfg.method})"] = time.perf_counter() - start
    if is_main_process():
        edit.save(run_dir / "edit")  # a given edit too: the run folder holds what it measured
    wait_for_everyone()

    start = time.perf_counter()
    if clear:
        unlearned = evaluator.evaluate(benchmark, edit, gold=gold)
    else:
        evaluator.cfg = cfg.eval
        unlearned = evaluator.evaluate(benchmark, edit)
    timings["evaluate unlearned"] = time.perf_counter() - start

    # The relearning attack's optimizer would dominate the peak: keep the method's own.
    peak_before_robustness = peak_memory_mb(vlm.device)
    start = time.perf_counter()
    generalisation = {} if clear else {"vanilla": generalisation_breakdown(evaluator, benchmark),
                                       "unlearned": generalisation_breakdown(evaluator, benchmark, edit)}
    timings["generalisation breakdown"] = time.perf_counter() - start

    config = {
        "name": cfg.name, "family": vlm.adapter.family, "model_path": model_path, "method": method_name,
        "vanilla_source": vanilla_source(model_path, trained, cfg), "edit_source": cfg.edit,
        "benchmark_name": benchmark.name, "benchmark": benchmark.meta, "forget_percent": cfg.forget_percent,
        "seed": cfg.seed, "device": str(vlm.device), "processes": process_rank_and_count()[1],
        "dtype": dtype_name(vlm.dtype), "dtype_option": cfg.dtype, "world": asdict(cfg.world),
        # --max-pixels as asked, and the cap the image processor applied (None: fixed-size images)
        "max_pixels": cfg.max_pixels, "image_max_pixels": vlm.adapter.image_max_pixels(vlm.processor),
        "injection": cfg.injection.to_dict(),
        # which hyperparameters: "tiny" (tuned for this tool's models), "paper" (7B-class), "given"
        "model_built_here": built_here, "preset": preset,
        # the tiny model family whose validation sweeps chose the tiny preset's searched values
        "preset_family": preset_choice_family(cfg) if preset == "tiny" else None,
        "method_config": cfg.method_cfg.to_dict() if cfg.edit is None else edit.meta.get("config"), "eval": asdict(cfg.eval),
        "mia": asdict(cfg.mia) if cfg.mia else None, "relearn": asdict(relearn_cfg) if relearn_cfg else None,
        "attacks": asdict(attack_config(cfg, built_here)) if cfg.attacks else None,
        "versions": versions(),
        # a --preset file (e.g. a sweep's choice) applied on top of the preset above
        "preset_file": preset_record(cfg.preset) if cfg.preset is not None else None,
    }
    config.update(min_knowledge=cfg.min_knowledge, allow_unknown=cfg.allow_unknown)
    if clear:
        config.update({"gold_model_path": gold_path, "gold_model": gold_model_record(gold_path, cfg),
                       "clear_tofu": cfg.clear_tofu})
    if reference_path:
        config["reference_model_path"] = reference_path
        given = cfg.method_cfg is not None and cfg.method_cfg.extra.get("reference") != RETAIN_REFERENCE
        config["reference_model"] = gold_model_record(reference_path, replace(cfg, gold_model=reference_path) if given else cfg)
    results = {
        "config": config,
        "protocol": benchmark.protocol,
        "knowledge_check": knowledge,
        "vanilla": vanilla,
        "unlearned": unlearned,
        **({"gold": gold} if clear else {}),
        # Chance-corrected forget efficacy, retention and their harmonic mean per modality (eval/tradeoff.py).
        **({} if clear else {"tradeoff": tradeoff(vanilla["figures"], unlearned["figures"])}),
        "generalisation": generalisation,
        "robustness": {"mia": {"pending": STAGE_PENDING}, "relearn": {"pending": STAGE_PENDING}},
        "failures": [],
        "edit": {"kind": edit.kind, "path": str(run_dir / "edit"), "steps": edit.meta.get("steps")},
        "cost": {"wall_time_s": timings, "peak_memory_mb": peak_memory_mb(vlm.device),
                 "peak_memory_mb_before_robustness": peak_before_robustness,
                 "changed_parameters": getattr(edit, "changed_parameters", 0)},
    }
    # Everything measured so far is on disk before the stages most likely to run out of memory.
    _write_outputs(run_dir, results)

    def stage_done(stage: str, outcome: dict[str, Any]) -> None:
        results["robustness"][stage] = outcome
        if "failed" in outcome:
            results["failures"].append(outcome["failed"])
        results["cost"]["peak_memory_mb"] = peak_memory_mb(vlm.device)
        _write_outputs(run_dir, results)

    run_robustness(replace(cfg, relearn=relearn_cfg), vlm, benchmark, edit, timings, on_stage=stage_done)
    run_attacks(attack_config(cfg, built_here), vlm, benchmark, edit, results, run_dir)
    wait_for_everyone()
    return results


CERTIFICATE_FILE = "certificate.json"


def attack_config(cfg: RunConfig, built_here: bool) -> AttackConfig | None:
    """The run's battery settings with its seed, progress and who built the model (benign
    relearning's LoRA "auto" resolves as the relearning attack's)."""
    if cfg.attacks is None:
        return None
    return replace(cfg.attacks, seed=cfg.seed, progress=cfg.progress, model_built_here=built_here)


def run_attacks(cfg: AttackConfig | None, vlm: VLM, benchmark: Benchmark, edit: Any, results: dict[str, Any],
                run_dir: Path, previous: dict[str, Any] | None = None) -> None:
    """The attack battery as robustness stages (``results["robustness"]["attacks"]``): results.json
    and the reports rewritten after each attack, ``certificate.json`` after the certificate; each
    attack's seconds in ``results["cost"]["wall_time_s"]`` ("attack: <name>"). ``previous``: an
    earlier battery's outcomes on the same edit, kept for the attacks not run now (run_battery)."""
    from .eval.attacks import parse_attacks

    if cfg is None:
        results["robustness"]["attacks"] = {"skipped": "switched off (--attacks none)"}
        _write_outputs(run_dir, results)
        return
    names = parse_attacks(cfg.attacks)
    if not names:
        results["robustness"]["attacks"] = {"skipped": "switched off (--attacks none)"}
        _write_outputs(run_dir, results)
        return
    kept = {k: v for k, v in (previous or {}).items() if k not in names and isinstance(v, dict) and "records" in v}
    stages = results["robustness"]["attacks"] = {**kept, **{name: {"pending": STAGE_PENDING} for name in names}}
    stages["certificate"] = {"pending": STAGE_PENDING}
    if is_main_process():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    timings = results["cost"].setdefault("wall_time_s", {})

    def attack_done(stage: str, outcome: dict[str, Any]) -> None:
        stages[stage] = outcome
        if "failed" in outcome:
            results["failures"].append(outcome["failed"])
        results["cost"]["peak_memory_mb"] = peak_memory_mb(vlm.device)
        if stage != "certificate":
            # results.json after each attack; the reports (their plots take seconds) once, at the end
            # (`mllm-unlearn report RUN_DIR` renders them from a results.json a crash left behind).
            if is_main_process():
                atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
            return
        _write_outputs(run_dir, results)
        if is_main_process() and "skipped" not in outcome:
            atomic_write_text(run_dir / CERTIFICATE_FILE, json.dumps(outcome, indent=2, default=str))

    run_battery(vlm, benchmark, edit, cfg, on_stage=attack_done, timings=timings, previous=kept)


def attack_existing_run(run_dir: str | Path, cfg: AttackConfig, edit_path: str | Path | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """``mllm-unlearn attack RUN_DIR``: the battery on a finished run's model and edit (or
    ``edit_path``: a saved edit or an unlearned checkpoint of the run's model), its results.json,
    reports and certificate.json updated in place. Returns the updated results."""
    from .eval.attacks import BASELINE, parse_attacks
    from .report import load_results
    from .sweep import exclude_validation_people

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    config = results["config"]
    if results.get("protocol") == "clear":
        raise ValueError(f"{run_dir} is a CLEAR run: the attack battery probes MLLMU-Bench's classification questions, "
                         "which CLEAR has none of")
    root = (config.get("benchmark") or {}).get("root")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(f"{run_dir / 'results.json'}: the run's benchmark folder {root!r} is not there")
    benchmark = load_mllmu(root, config["forget_percent"], seed=config["seed"])
    if config.get("preset_file"):
        benchmark = exclude_validation_people(benchmark, config["preset_file"])
    model_path = config.get("model_path")
    if not model_path or not Path(model_path).is_dir():
        raise FileNotFoundError(f"{run_dir / 'results.json'}: the run's model {model_path!r} is not there")
    edit_source = Path(edit_path) if edit_path is not None else run_dir / "edit"
    given_edit_kind(edit_source)  # a clear error before the model loads
    vlm = load_vlm(model_path, device, config.get("dtype_option") or "auto", config.get("max_pixels"))
    edit = load_given_edit(edit_source, vlm)
    edit.apply(vlm).remove()  # an edit of another model fails here
    cfg = replace(cfg, seed=config["seed"], model_built_here=bool(config.get("model_built_here", True)))
    earlier = results.get("robustness", {}).get("attacks")
    # An earlier battery's other attacks are kept when this one attacks the same edit with the same
    # settings (their records then join the certificate); otherwise the battery starts afresh.
    same = (isinstance(earlier, dict) and edit_path is None and not config.get("attacks_edit")
            and {k: v for k, v in (config.get("attacks") or {}).items() if k not in ("attacks", "progress")}
            == {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=str)).items()
                if k not in ("attacks", "progress")})
    previous = earlier if same else None
    results["config"]["attacks"] = asdict(cfg)
    results["config"]["attacks_edit"] = str(edit_source) if edit_path is not None else None
    results.setdefault("failures", [])
    results.setdefault("cost", {}).setdefault("wall_time_s", {})
    rerun = set(parse_attacks(cfg.attacks)) | {BASELINE}
    for key in [k for k in results["cost"]["wall_time_s"] if k.startswith("attack: ")]:
        if previous is None or key.removeprefix("attack: ") in rerun:
            del results["cost"]["wall_time_s"][key]  # this battery's seconds replace an earlier one's
    results["failures"] = [f for f in results["failures"] if not str(f.get("stage", "")).endswith(" attack")
                           or f.get("stage") == "relearning attack"]
    run_attacks(cfg, vlm, benchmark, edit, results, run_dir, previous)
    return results


ROBUSTNESS_STAGES = {"mia": "membership inference", "relearn": "relearning attack"}


def stage_failure(stage: str, error: BaseException) -> dict[str, Any]:
    """What results.json records of a stage that raised: the stage, the error's type and message."""
    import traceback

    return {"stage": stage, "error": type(error).__name__, "message": str(error),
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:]}


def run_robustness(cfg: RunConfig, vlm: VLM, benchmark: Benchmark, edit: Any, timings: dict[str, float],
                   on_stage: Any = None) -> dict[str, Any]:
    """Membership inference (vanilla and unlearned) and the relearning attack, each skipped with
    the reason recorded when switched off or when the benchmark cannot support it.

    A stage that raises (out of memory included) is recorded as ``{"failed": {stage, error,
    message, traceback}}`` and the next stage still runs; ``on_stage(key, outcome)`` is called
    after each stage (the pipeline rewrites results.json there). ``cfg.relearn`` must be resolved
    (``resolve_relearn``); the attack leaves ``vlm`` as it found it, also when it fails."""
    import sys

    out: dict[str, Any] = {}

    def finish(key: str, outcome: dict[str, Any]) -> None:
        out[key] = outcome
        if on_stage is not None:
            on_stage(key, outcome)

    def failed(key: str, error: Exception) -> dict[str, Any]:
        print(f"warning: the {ROBUSTNESS_STAGES[key]} failed ({type(error).__name__}: {error}); recorded in "
              "results.json, the run goes on", file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # an out-of-memory error leaves cached blocks the next stage needs
        return {"failed": stage_failure(ROBUSTNESS_STAGES[key], error)}

    members, non_members = mia_items(benchmark)
    if cfg.mia is None:
        finish("mia", {"skipped": "switched off (--no-mia)"})
    elif not members or not non_members:
        finish("mia", {"skipped": f"{benchmark.name} has no held-out (non-member) people: add a Holdout_Set config "
                                  "of people the vanilla model never saw" if not non_members else
                                  f"{benchmark.name} has no forget training items"})
    else:
        start = time.perf_counter()
        try:
            outcome = {"vanilla": membership_inference(vlm, members, non_members, cfg.mia, seed=cfg.seed),
                       "unlearned": membership_inference(vlm, members, non_members, cfg.mia, edit=edit, seed=cfg.seed)}
        except Exception as error:  # noqa: BLE001 - any failure (OOM included) is recorded, the run goes on
            outcome = failed("mia", error)
        timings["membership inference"] = time.perf_counter() - start
        finish("mia", outcome)
    if cfg.relearn is None:
        finish("relearn", {"skipped": "switched off (--no-relearn)"})
    else:
        start = time.perf_counter()
        try:
            outcome = relearn_attack(vlm, benchmark, edit, replace(cfg.relearn, seed=cfg.seed))
        except RelearnNotApplicable as error:  # a benchmark too small or without classification questions
            outcome = {"skipped": str(error)}
        except Exception as error:  # noqa: BLE001 - any failure (OOM included) is recorded, the run goes on
            outcome = failed("relearn", error)
        timings["relearning attack"] = time.perf_counter() - start
        finish("relearn", outcome)
    return out
