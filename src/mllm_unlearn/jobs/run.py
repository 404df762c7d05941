"""``mllm-unlearn run``: benchmark -> vanilla model (cached) -> evaluate -> unlearn (or a given
edit) -> evaluate -> robustness and attacks -> report, results.json rewritten after each stage,
into a run folder that changes as one unit (``run_folder.py``)."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from typing import Any

from ..data.clear import is_clear_layout
from ..eval import EvalConfig, Evaluator
from ..eval.clear import ClearEvalConfig, ClearEvaluator
from ..eval.generalisation import generalisation_breakdown
from ..eval.knowledge import KnowledgeCheckFailed, failure_message, knowledge_check
from ..eval.relearn import resolve_relearn
from ..eval.stages import STAGE_PENDING
from ..eval.tradeoff import tradeoff
from ..methods import get_method
from ..methods.base import UnlearningDiverged
from ..models import adapter_for_checkpoint, adapter_for_family
from ..training import sharding
from ..utils import init_distributed, is_main_process, peak_memory_mb, resolve_device, seed_everything, wait_for_everyone
from .attack import attack_config, run_attacks, run_robustness
from .config import BUILTIN_CLEAR, RETAIN_REFERENCE, RunConfig
from .prepare import (
    check_gold_model,
    given_edit_kind,
    gold_model_record,
    load_given_edit,
    prepare_reported_benchmark,
    prepare_retain_model,
    prepare_vanilla,
    vanilla_source,
)
from .presets import model_built_here, resolve_method_config
from .record import run_record
from .results import write_results
from .run_folder import EDIT_DIR, RunFolder, edit_digest, open_run_folder
from .stopped import knowledge_advice, write_stopped_run
from .vanilla_figures import MAIN_PART, cached_evaluation, cached_forget_evaluation, cached_generalisation, vanilla_cache


def clear_eval_config(cfg: EvalConfig) -> ClearEvalConfig:
    """CLEAR's evaluation options from the run's: batch, generation length (CLEAR's own 300
    unless given), item cap, seed; ROUGE only when the ``generation`` task is asked for."""
    length = {"max_new_tokens": cfg.max_new_tokens} if cfg.max_new_tokens else {}
    return ClearEvalConfig(batch_size=cfg.batch_size, max_items_per_task=cfg.max_items_per_group,
                           rouge="generation" in cfg.tasks, seed=cfg.seed, progress=cfg.progress, **length)


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run everything and write ``runs/<name>/results.json`` and ``report.md``; returns the results.

    Under ``accelerate launch`` every process runs this: training is data-parallel, evaluation
    items are shared out and gathered, and only the main process writes files.
    """
    # Before accelerate's state exists: DeepSpeed refused, accelerate's FSDP flag taken over (FSDP2).
    sharding.refuse_deepspeed(f"mllm-unlearn run --method {cfg.method}")
    # The CLI leaves method_cfg to be resolved below (preset by model) and puts --shard in the overrides.
    requested = cfg.method_cfg.shard if cfg.method_cfg is not None else cfg.method_overrides.get("shard")
    shard = sharding.claim_accelerate_fsdp(requested)
    init_distributed(cpu=resolve_device(cfg.device).type == "cpu")
    built_here = model_built_here(cfg)
    preset = None  # a given --edit trains nothing: no hyperparameters to choose
    method = None
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
        (adapter_for_checkpoint(cfg.model) if cfg.model else adapter_for_family(cfg.family)).check_max_pixels(cfg.max_pixels)
    protocol = getattr(cfg.eval, "protocol", "ours")
    if protocol != "ours" and (cfg.benchmark == BUILTIN_CLEAR or (cfg.benchmark and is_clear_layout(cfg.benchmark))):
        raise ValueError(f"--protocol {protocol} is MLLMU-Bench's evaluation; a CLEAR benchmark is evaluated "
                         "with CLEAR's own protocol (leave --protocol out)")
    with open_run_folder(cfg.runs_dir, cfg.name) as folder:  # locked; a bad name or runs dir fails here
        return measure_run(cfg, folder, method, preset, relearn_cfg, built_here)


def measure_run(cfg: RunConfig, folder: RunFolder, method: Any, preset: str | None, relearn_cfg: Any,
                built_here: bool) -> dict[str, Any]:
    """The run's work, written into ``folder.work`` and committed at the end (``run_pipeline``
    has checked the options and resolved the method's settings)."""
    run_dir = folder.work
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

    # The vanilla figures come from the evaluation cache when an earlier job measured this model on
    # these items with these settings (jobs/vanilla_figures.py).
    cache = vanilla_cache(cfg, model_path, vlm)
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
            gold = cached_evaluation(vanilla_cache(cfg, gold_path, gold_vlm), gold_evaluator, benchmark, part="gold")
            timings["evaluate gold"] = time.perf_counter() - start
        evaluator: Any = ClearEvaluator(vlm, clear_eval_config(cfg.eval), share_prompts_with=gold_evaluator)
        del gold_vlm, gold_evaluator  # only the gold model's results are needed from here on
    else:
        evaluator = Evaluator(vlm, EvalConfig(**{**asdict(cfg.eval), "image_swap_check": True}))
    # Before any unlearning, and first: a model that never knew the forget people has nothing to
    # forget, and the forget split alone shows it (its records then serve the whole evaluation).
    start = time.perf_counter()
    targeted = method.target_modalities if cfg.edit is None else ("vqa", "qa")
    forget_figures = cached_forget_evaluation(cache, evaluator, benchmark, targeted)
    knowledge = knowledge_check(forget_figures, benchmark.protocol, targeted, cfg.min_knowledge, cfg.allow_unknown)
    timings["knowledge check"] = time.perf_counter() - start
    if knowledge.get("passed") is False:
        advice = knowledge_advice(cfg, model_path)
        if not cfg.allow_unknown:  # the run folder keeps the vanilla figures and the check (jobs/stopped.py)
            write_stopped_run(run_dir, cfg, vlm, benchmark, vanilla=forget_figures, knowledge=knowledge,
                              message=failure_message(knowledge, advice), advice=advice, model_path=model_path,
                              trained=trained, preset=preset, timings=timings, gold=gold)
            raise KnowledgeCheckFailed(failure_message(knowledge, advice)
                                       + f" Recorded in {folder.partial_location() / 'results.json'}.")
        if is_main_process():
            print(f"warning: {failure_message(knowledge, advice)} Going on (--allow-unknown).", file=sys.stderr)
    start = time.perf_counter()
    vanilla = cached_evaluation(cache, evaluator, benchmark, known=forget_figures, gold=gold)
    timings["evaluate vanilla"] = time.perf_counter() - start

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
                                     f"{folder.partial_location() / 'edit-last-good'}.", error.last_good) from error
        method_name = cfg.method
        timings[f"unlearn ({cfg.method})"] = time.perf_counter() - start
    if is_main_process():
        edit.save(run_dir / EDIT_DIR)  # a given edit too: the run folder holds what it measured
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
    generalisation = {} if clear else {"vanilla": cached_generalisation(cache, evaluator, benchmark),
                                       "unlearned": generalisation_breakdown(evaluator, benchmark, edit)}
    timings["generalisation breakdown"] = time.perf_counter() - start

    config = run_record(cfg, vlm, benchmark, model_path=model_path, method_name=method_name, preset=preset,
                        method_config=cfg.method_cfg.to_dict() if cfg.edit is None else edit.meta.get("config"),
                        vanilla_source=vanilla_source(model_path, trained, cfg))
    config.update({
        "eval": asdict(cfg.eval), "mia": asdict(cfg.mia) if cfg.mia else None,
        "relearn": asdict(relearn_cfg) if relearn_cfg else None,
        "attacks": asdict(attack_config(cfg, built_here)) if cfg.attacks else None,
        "min_knowledge": cfg.min_knowledge, "allow_unknown": cfg.allow_unknown})
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
        "vanilla_eval_cache": cache.record(MAIN_PART),
        "vanilla": vanilla,
        "unlearned": unlearned,
        **({"gold": gold} if clear else {}),
        # Chance-corrected forget efficacy, retention and their harmonic mean per modality (eval/tradeoff.py).
        **({} if clear else {"tradeoff": tradeoff(vanilla["figures"], unlearned["figures"])}),
        "generalisation": generalisation,
        "robustness": {"mia": {"pending": STAGE_PENDING}, "relearn": {"pending": STAGE_PENDING}},
        "failures": [],
        # The edit these figures belong to, by content (export, attack and report check it).
        "edit": {"kind": edit.kind, "path": str(folder.final / EDIT_DIR), "steps": edit.meta.get("steps"),
                 "sha256": edit_digest(run_dir / EDIT_DIR) if is_main_process() else None},
        "cost": {"wall_time_s": timings, "peak_memory_mb": peak_memory_mb(vlm.device),
                 "peak_memory_mb_before_robustness": peak_before_robustness,
                 "changed_parameters": getattr(edit, "changed_parameters", 0)},
        "complete": False,  # until the last stage: a stopped run's results.json says so
    }
    # Everything measured so far is on disk before the stages most likely to run out of memory.
    write_results(run_dir, results)

    def stage_done(stage: str, outcome: dict[str, Any]) -> None:
        results["robustness"][stage] = outcome
        if "failed" in outcome:
            results["failures"].append(outcome["failed"])
        results["cost"]["peak_memory_mb"] = peak_memory_mb(vlm.device)
        results["vanilla_eval_cache"] = cache.record(MAIN_PART)  # membership inference's part included
        write_results(run_dir, results)

    run_robustness(replace(cfg, relearn=relearn_cfg), vlm, benchmark, edit, timings, on_stage=stage_done, cache=cache)
    run_attacks(attack_config(cfg, built_here), vlm, benchmark, edit, results, run_dir)
    folder.commit(results)  # marked complete, then swapped in as one unit
    wait_for_everyone()
    return results
