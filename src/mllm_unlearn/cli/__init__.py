"""Command line: a thin layer that parses options and calls the Python API.

Options shared by commands are declared once in ``options.py``; their defaults come from the
config dataclasses, whose ``__post_init__`` checks the values (``options.option_message`` names
the option in the error)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from ..data.synthetic import WorldConfig
from ..eval.attacks.base import AttackConfig
from ..eval.evaluator import EvalConfig
from ..eval.relearn import AUTO, DEFAULT_LORA_RANK, FULL_FINETUNE_LR, LORA_LR, RelearnConfig
from ..jobs.config import RunConfig
from ..jobs.finetune import FinetuneJob
from ..jobs.sequence import SequenceConfig
from ..jobs.sweep import SweepConfig
from ..recipes.finetune import RECIPES, FinetuneConfig
from ..recipes.inject import InjectionConfig
from .options import (
    Attacks,
    BatchSize,
    Benchmark,
    CacheDir,
    CertificateMargin,
    Device,
    Dtype,
    Epochs,
    EvalCache,
    Family,
    Forget,
    GradientCheckpointing,
    InjectEpochs,
    InjectLr,
    InjectTarget,
    Lr,
    MaxNewTokens,
    MaxPixels,
    MaxSteps,
    Method,
    MethodOption,
    Model,
    Name,
    People,
    Preset,
    PretrainEpochs,
    QuantGroupSize,
    Quiet,
    RealPeople,
    RunsDir,
    Seed,
    Shard,
    ShippedVanilla,
    Tasks,
    Tofu,
    number,
    option_message,
)

app = typer.Typer(add_completion=False, help="Make a multimodal LLM forget chosen knowledge, and measure it.")


# What a command turns into one ``error:`` line: bad input (exit 2), and what the file system refused
# (a read-only folder, a full disk: exit 1; the error names the file).
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)
USER_ERRORS = (*INPUT_ERRORS, OSError)


def fail(error: BaseException) -> NoReturn:
    """A clean error exit naming the option behind a dataclass field's error (code 2), or the file
    an operating-system error is about (code 1: nothing wrong with the input)."""
    if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, FileExistsError)):
        where = f"{error.filename}: " if error.filename else ""
        typer.secho(f"error: {where}{error.strerror or error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.secho(f"error: {' '.join(option_message(error).splitlines())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def parse_options(options: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, booleans), else as text."""
    parsed: dict[str, object] = {}
    for text in options:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {text!r}: expected KEY=VALUE")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def parse_relearn_lora(text: str | None) -> object:
    """``--relearn-lora``: None -> "auto", "off" -> None (full fine-tuning), "16" -> LoRA rank 16."""
    from ..training.loop import LoraOptions

    if text is None or text.strip().lower() == AUTO:
        return AUTO
    if text.strip().lower() in ("off", "none", "full", "0"):
        return None
    try:
        rank = int(text)
    except ValueError:
        rank = 0
    if rank < 1:
        raise ValueError(f"--relearn-lora {text!r}: expected a LoRA rank (a positive integer), 'off' or 'auto'")
    return LoraOptions(r=rank, alpha=rank)


def attack_options(attacks: str, quant_group_size: int, margin: float, seed: int, quiet: bool,
                   relearn: dict | None = None) -> object:
    """The battery's settings from ``--attacks`` and its options; None for ``--attacks none``.
    ``relearn``: benign relearning's steps, lr and lora (the relearning attack's options)."""
    from ..eval.attacks import parse_attacks

    names = parse_attacks(attacks)
    if not names:
        return None
    benign = {f"benign_{k}": v for k, v in (relearn or {}).items()}
    return AttackConfig(attacks=names, quant_group_size=quant_group_size, margin=margin, seed=seed, progress=not quiet,
                        **benign)


def _injection_config(seed: int, inject_epochs: int | None, pretrain_epochs: int | None,
                      task_formats: float = 0.0, inject_lr: float | None = None,
                      inject_target: float | None = None) -> InjectionConfig:
    """The knowledge-injection settings of `run` and `finetune --recipe builtin` from their options
    (InjectionConfig checks them); the dataclass's defaults for those not given."""
    # The command line asks for a share a stage can reach; the Python API also takes 0 and > 1 (tests).
    if inject_target is not None and not 0 < inject_target <= 1:
        raise ValueError(f"InjectionConfig.learned_target must lie in (0, 1], got {inject_target}")
    given = {"lr": inject_lr, "learned_target": inject_target, "finetune_epochs": inject_epochs,
             "pretrain_epochs": pretrain_epochs}
    overrides = {field: value for field, value in given.items() if value is not None}
    if task_formats:
        overrides["qa_task_forms"] = {"generation": task_formats, "cloze": task_formats}
    return InjectionConfig(seed=seed, **overrides)


def _preset_and_method(preset: Optional[Path], method: Optional[str]) -> tuple[Optional[dict], Optional[str]]:
    """A ``--preset`` file loaded and checked before any work (its method against ``--method``, its
    values' names), and the method it names; ``(None, method)`` without one."""
    if preset is None:
        return None, method
    from ..jobs.presets import load_preset
    from ..methods import MethodConfig
    from ..methods.search_spaces import apply_values

    preset_file = load_preset(preset)
    if method is not None and method != preset_file["method"]:
        raise ValueError(f"--method {method} differs from the preset's method {preset_file['method']!r} ({preset})")
    apply_values(MethodConfig(), preset_file["values"], source=f"--preset {preset}")  # bad names fail now
    return preset_file, preset_file["method"]


def _recipe_summary(name: str) -> str:
    """A fine-tuning recipe's settings as ``--recipe``'s help states them."""
    recipe = RECIPES[name]()
    lora = f"LoRA r{recipe.lora.r} a{recipe.lora.alpha}, " if recipe.lora else ""
    batch = f"batch {recipe.batch_size}" + (f" x accumulation {recipe.grad_accumulation}"
                                             if recipe.grad_accumulation > 1 else "")
    warmup = (f", {recipe.warmup_epochs:g} warmup epoch{'s' if recipe.warmup_epochs != 1 else ''}"
              if recipe.warmup_epochs else "")
    return f"{lora}lr {number(recipe.lr)}, {recipe.epochs} epochs, {batch}{warmup}"


@app.command()
def run(
    name: Name = RunConfig.name,
    family: Family = RunConfig.family,
    model: Model = None,
    benchmark: Benchmark = None,
    forget: Forget = RunConfig.forget_percent,
    tofu: Tofu = RunConfig.clear_tofu,
    gold_model: Annotated[Optional[Path], typer.Option(
        help="CLEAR: checkpoint fine-tuned on the retain split only, for forget quality (`mllm-unlearn finetune "
             "--retain-only` makes one; default: trained here for tiny models).")] = None,
    method: Method = None,
    preset: Preset = None,
    edit: Annotated[Optional[Path], typer.Option(
        help="Evaluate this instead of unlearning: a saved edit (RUN_DIR/edit) or an unlearned checkpoint "
             "of --model (made by this tool or another; compared weight by weight).")] = None,
    lr: Lr = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    lora: Annotated[bool, typer.Option(help="Unlearn through LoRA adapters (merged into the edit).")] = False,
    shard: Shard = None,
    gradient_checkpointing: GradientCheckpointing = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(
        min=1, help="Localisation passes (MANU statistics, MMUnlearner's Fisher, MIP-Editor's path search) and "
                    "MLLMEraser's PGD: split each batch into parts of at most this many padded tokens "
                    "(results unchanged, less memory).")] = None,
    option: MethodOption = [],
    protocol: Annotated[str, typer.Option(
        help="MLLMU-Bench evaluation settings: 'ours' (zero-shot, chat template, likelihood scorer) or "
             "'mllmu' (MLLMU-Bench's eval.py exactly: its few-shot per task from Full_Set, its LLaVA prompts, "
             "generate scorer).")] = EvalConfig.protocol,
    scorer: Annotated[Optional[str], typer.Option(
        help="Classification scorer: likelihood or generate (MLLMU-Bench's); default: the protocol's.")] = None,
    few_shot: Annotated[int, typer.Option(
        help="--protocol ours: few-shot demonstration people per split (not scored).")] = EvalConfig.few_shot,
    max_new_tokens: MaxNewTokens = None,
    tasks: Tasks = ",".join(EvalConfig.tasks),
    people: People = WorldConfig.fictitious,
    real_people: RealPeople = WorldConfig.real_world,
    inject_epochs: InjectEpochs = None,
    pretrain_epochs: PretrainEpochs = None,
    inject_lr: InjectLr = None,
    inject_target: InjectTarget = None,
    task_formats: Annotated[float, typer.Option(
        help="Knowledge injection: probability that an open-QA draw is asked with MLLMU-Bench's generation "
             "instruction, and the same for its fill-in-the-blank form (0 to 0.5, e.g. 0.25; 0 = off, the default). "
             "Teaches a from-scratch model those formats; see docs/knowledge-injection.md#the-forms-it-trains for what it costs.")] = 0.0,
    min_knowledge: Annotated[float, typer.Option(
        help="Knowledge check before unlearning: the vanilla model's classification accuracy on the forget split "
             "must beat chance significantly (one-sided binomial test, p <= 0.05) and by this many points in each "
             "modality the method targets, else the run stops (recorded in results.json).")] = RunConfig.min_knowledge,
    allow_unknown: Annotated[bool, typer.Option(
        help="Go on when the knowledge check fails (the report says the vanilla model did not know the "
             "forget people).")] = RunConfig.allow_unknown,
    mia: Annotated[bool, typer.Option(
        help="Membership inference (forget vs held-out people) before and after unlearning.")] = True,
    relearn: Annotated[bool, typer.Option(
        help="Relearning attack on the unlearned model (a curve over steps).")] = True,
    relearn_steps: Annotated[int, typer.Option(
        help="Fine-tuning steps of the relearning attack.")] = RelearnConfig.steps,
    relearn_lr: Annotated[Optional[float], typer.Option(
        help=f"Relearning attack learning rate (default {number(FULL_FINETUNE_LR)} with full fine-tuning, "
             f"{number(LORA_LR)} with LoRA).")] = None,
    relearn_lora: Annotated[Optional[str], typer.Option(
        help="Relearning attack through LoRA adapters of this rank (e.g. 16), or 'off' for full fine-tuning "
             f"(snapshot on CPU). Default: full on models this tool built, rank {DEFAULT_LORA_RANK} on any other "
             "model.")] = None,
    attacks: Attacks = ",".join(AttackConfig.attacks),
    quant_group_size: QuantGroupSize = AttackConfig.quant_group_size,
    certificate_margin: CertificateMargin = AttackConfig.margin,
    seed: Seed = RunConfig.seed,
    device: Device = RunConfig.device,
    dtype: Dtype = RunConfig.dtype,
    max_pixels: MaxPixels = None,
    runs_dir: RunsDir = Path(RunConfig.runs_dir),
    cache_dir: CacheDir = Path(RunConfig.cache_dir),
    shipped_vanilla: ShippedVanilla = RunConfig.shipped_vanilla,
    eval_cache: EvalCache = RunConfig.eval_cache,
    quiet: Quiet = False,
) -> None:
    """Build or load the vanilla model, evaluate, unlearn the forget split (or take a given --edit),
    evaluate again, attack, write a report."""
    from ..eval.mia import MIAConfig
    from ..jobs.run import run_pipeline
    from ..methods.base import UnlearningDiverged
    from ..training.loop import LoraOptions

    training_options = {"--preset": preset, "--method": method, "--lr": lr, "--epochs": epochs, "--max-steps": max_steps,
                        "--batch-size": batch_size, "--lora": lora or None, "--option": option or None,
                        "--[no-]gradient-checkpointing": gradient_checkpointing, "--max-batch-tokens": max_batch_tokens}
    given = [flag for flag, value in training_options.items() if value is not None]
    if edit is not None and given:
        typer.secho(f"error: --edit evaluates a given edit; {', '.join(given)} only apply when unlearning",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    try:
        preset_file, method = _preset_and_method(preset, method)
        from ..methods.defaults import DEFAULT_METHOD

        method = method or DEFAULT_METHOD
        world = WorldConfig(fictitious=people, real_world=real_people, seed=seed)
        injection = _injection_config(seed, inject_epochs, pretrain_epochs, task_formats, inject_lr, inject_target)
        # The preset (tiny or the papers', by model) is looked up by the run, a --preset file's values
        # go on top of it, and explicit options on top of those.
        overrides = {k: v for k, v in {"lr": lr, "epochs": epochs, "max_steps": max_steps,
                                       "batch_size": batch_size}.items() if v is not None}
        overrides.update(progress=not quiet, lora=LoraOptions() if lora else None, extra=parse_options(option))
        if gradient_checkpointing is not None:
            overrides["gradient_checkpointing"] = gradient_checkpointing
        if max_batch_tokens is not None:
            overrides["max_batch_tokens"] = max_batch_tokens
        if shard is not None:
            overrides["shard"] = shard
        relearn_mode = parse_relearn_lora(relearn_lora)
        battery = attack_options(attacks, quant_group_size, certificate_margin, seed, quiet,
                                 {"steps": relearn_steps, "lr": relearn_lr, "lora": relearn_mode})
        eval_cfg = EvalConfig(protocol=protocol, scorer=scorer, few_shot=few_shot, max_new_tokens=max_new_tokens,
                              tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), seed=seed, progress=not quiet)
        cfg = RunConfig(name=name, family=family, model=str(model) if model else None,
                        benchmark=benchmark or None, clear_tofu=tofu, gold_model=str(gold_model) if gold_model else None,
                        forget_percent=forget, method=method, method_cfg=None, method_overrides=overrides,
                        edit=str(edit) if edit else None, seed=seed,
                        device=device, dtype=dtype, max_pixels=max_pixels, runs_dir=str(runs_dir), cache_dir=str(cache_dir),
                        shipped_vanilla=shipped_vanilla, world=world,
                        injection=injection, eval=eval_cfg, progress=not quiet,
                        mia=MIAConfig() if mia else None,
                        relearn=RelearnConfig(steps=relearn_steps, eval_every=max(1, relearn_steps // 4), seed=seed,
                                              lr=relearn_lr, lora=relearn_mode) if relearn else None,
                        attacks=battery, preset=preset_file, min_knowledge=min_knowledge, allow_unknown=allow_unknown,
                        eval_cache=eval_cache)
        run_pipeline(cfg)
    except (*USER_ERRORS, UnlearningDiverged) as error:
        fail(error)
    from ..utils import is_main_process

    if not is_main_process():
        return
    run_dir = runs_dir / name
    typer.echo((run_dir / "report.md").read_text())
    typer.echo(f"Wrote {run_dir / 'results.json'}, {run_dir / 'report.md'} and {run_dir / 'report.html'}")


@app.command()
def finetune(
    out: Annotated[Path, typer.Option(
        help="New folder for the fine-tuned checkpoint (finetune.json, written last, marks it finished).")],
    model: Annotated[Optional[Path], typer.Option(
        help="Base checkpoint of a supported family (e.g. llava-1.5-7b-hf); default: a fresh tiny model of "
             "--family built here, its tokenizer from the benchmark's texts.")] = None,
    benchmark: Benchmark = None,
    recipe: Annotated[str, typer.Option(
        help=f"mllmu (MLLMU-Bench's finetune.py: {_recipe_summary('mllmu')}), clear (CLEAR's: "
             f"{_recipe_summary('clear')}) or builtin (the tool's knowledge-injection curriculum for tiny "
             "models).")] = FinetuneConfig.recipe,
    retain_only: Annotated[bool, typer.Option(
        help="Train on the retain split only (--forget's people left out): the gold model of CLEAR's forget "
             "quality and NPO's retain reference (`run --gold-model`, `-o reference=`).")] = FinetuneConfig.retain_only,
    forget: Forget = FinetuneJob.forget_percent,
    tofu: Tofu = FinetuneJob.clear_tofu,
    lora: Annotated[Optional[bool], typer.Option(
        "--lora/--full", help="LoRA adapters (the recipe's rank) or full fine-tuning; default: the recipe's "
                              "(mllmu, clear: LoRA; builtin: full).")] = FinetuneConfig.lora,
    loss_on: Annotated[Optional[str], typer.Option(
        help="'answer' (default: the answer tokens only) or 'prompt+answer' (MLLMU-Bench's published "
             "loss).")] = FinetuneConfig.loss_on,
    keep_adapter: Annotated[bool, typer.Option(
        help="Write a peft adapter folder (PeftModel.from_pretrained(base, OUT)) instead of the merged "
             "checkpoint.")] = FinetuneConfig.keep_adapter,
    epochs: Annotated[Optional[int], typer.Option(help="Override the recipe's epochs (recorded).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Override the recipe's learning rate (recorded).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help="Override the recipe's batch size per process (recorded).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        help="Stop after this many optimizer steps (the schedule too).")] = None,
    gradient_checkpointing: GradientCheckpointing = FinetuneConfig.gradient_checkpointing,
    shard: Shard = None,
    save_every: Annotated[Optional[int], typer.Option(
        help="Save a resumable state every N optimizer steps (model, optimizer, scheduler, RNG, data position) in "
             "OUT.finetune-state.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the fine-tune whose state OUT.finetune-state holds.")] = FinetuneConfig.resume,
    stop_after: Annotated[Optional[int], typer.Option(
        help="Pause after this many steps in all, the state saved (a time-sliced job); --resume continues.")] = None,
    family: Family = FinetuneJob.family,
    people: People = WorldConfig.fictitious,
    real_people: RealPeople = WorldConfig.real_world,
    inject_epochs: InjectEpochs = None,
    pretrain_epochs: PretrainEpochs = None,
    inject_lr: InjectLr = None,
    inject_target: InjectTarget = None,
    seed: Seed = FinetuneConfig.seed,
    device: Device = FinetuneJob.device,
    dtype: Dtype = FinetuneJob.dtype,
    max_pixels: MaxPixels = None,
    cache_dir: CacheDir = Path(FinetuneJob.cache_dir),
    quiet: Quiet = False,
) -> None:
    """Fine-tune a base model on a benchmark's people (the vanilla model; with --retain-only the
    gold model) with a benchmark's recipe; writes a checkpoint and finetune.json."""
    from ..jobs.finetune import run_finetune
    from ..training.loop import TrainingPaused

    try:
        injection = None
        if recipe == "builtin":
            injection = _injection_config(seed, inject_epochs, pretrain_epochs, inject_lr=inject_lr,
                                          inject_target=inject_target)
        elif any(option is not None for option in (inject_epochs, pretrain_epochs, inject_lr, inject_target)):
            raise ValueError("--inject-epochs, --pretrain-epochs, --inject-lr and --inject-target set the builtin "
                             "recipe's curriculum; "
                             f"--recipe {recipe} takes --epochs")
        cfg = FinetuneConfig(recipe=recipe, retain_only=retain_only, lora=lora, loss_on=loss_on, epochs=epochs, lr=lr,
                             batch_size=batch_size, max_steps=max_steps, gradient_checkpointing=gradient_checkpointing,
                             shard=shard, save_every=save_every, resume=resume, stop_after=stop_after,
                             keep_adapter=keep_adapter, seed=seed, injection=injection, progress=not quiet)
        job = FinetuneJob(out=str(out), model=str(model) if model else None, benchmark=benchmark, finetune=cfg,
                          family=family, world=WorldConfig(fictitious=people, real_world=real_people, seed=seed),
                          forget_percent=forget, clear_tofu=tofu, device=device, dtype=dtype, max_pixels=max_pixels,
                          cache_dir=str(cache_dir))
        meta = run_finetune(job)
    except TrainingPaused as paused:
        typer.echo(f"{paused} (mllm-unlearn finetune ... --resume)")
        return
    except USER_ERRORS as error:
        fail(error)
    from ..utils import is_main_process

    if is_main_process():
        curve = meta["loss_curve"]
        last = curve[-1] if isinstance(curve, list) and curve else None
        typer.echo(f"Wrote {meta['output']} {out} (recipe {meta['recipe']['name']}"
                   f"{', retain split only' if retain_only else ''}, {meta['steps']} steps"
                   + (f", last loss {last:.4f}" if last is not None else "") + f") and {out / 'finetune.json'}")
        from ..eval.knowledge import summary_lines

        knowledge = meta.get("knowledge") or {}
        if "failed" in knowledge:
            typer.echo(f"Knowledge summary failed: {knowledge['failed']['error']}: {knowledge['failed']['message']}")
        else:
            typer.echo("What the model knows (classification accuracy, right/items, one-sided binomial test at chance):")
            for line in summary_lines(knowledge):
                typer.echo(f"  {line}")
        for warning in meta.get("warnings") or []:  # again at the end, where they are seen
            typer.echo(f"warning: {warning}", err=True)


@app.command()
def sweep(
    method: Annotated[str, typer.Option(help="The method to tune (its search space: methods/search_spaces.py).")],
    trials: Annotated[int, typer.Option(
        help="Finished trials wanted: a resumed sweep runs only the missing ones.")] = SweepConfig.trials,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default RUNS_DIR/sweep-METHOD): trials.json, front.json, preset.json, report.md, "
             "report.html, study.db.")] = None,
    storage: Annotated[Optional[str], typer.Option(
        help="Optuna storage URL or SQLite file, shareable by several processes (default OUT/study.db).")] = None,
    study_name: Annotated[Optional[str], typer.Option(
        help="Study name in the storage (default: the method's name).")] = None,
    family: Family = RunConfig.family,
    model: Model = None,
    benchmark: Benchmark = None,
    forget: Forget = RunConfig.forget_percent,
    max_items: Annotated[Optional[int], typer.Option(
        help="Subsample each validation split x modality to this many questions (seeded).")] = None,
    min_retention: Annotated[Optional[float], typer.Option(
        help="Choose the preset among front trials keeping at least this retention (0 to 1, e.g. 0.95; the whole "
             "front when none does). Changes only the choice.")] = None,
    batch_size: BatchSize = None,
    option: MethodOption = [],
    people: People = WorldConfig.fictitious,
    real_people: RealPeople = WorldConfig.real_world,
    seed: Seed = RunConfig.seed,
    device: Device = RunConfig.device,
    dtype: Dtype = RunConfig.dtype,
    runs_dir: RunsDir = Path(RunConfig.runs_dir),
    cache_dir: CacheDir = Path(RunConfig.cache_dir),
    shipped_vanilla: ShippedVanilla = RunConfig.shipped_vanilla,
    eval_cache: EvalCache = RunConfig.eval_cache,
    quiet: Quiet = False,
) -> None:
    """Search a method's hyperparameters on the validation split (chance-corrected forget efficacy vs
    retention, Optuna), resumable; writes the Pareto front and the chosen preset (run --preset). The
    built-in world has validation people; a --benchmark directory's validation split is carved out of
    its retain and real-world people (seeded; docs/sweep.md#the-validation-split)."""
    from ..jobs.sweep import run_sweep
    from ..methods import MethodConfig

    out = out or runs_dir / f"sweep-{method}"

    def progress(trial: dict) -> None:
        if not quiet and trial.get("objectives"):
            objectives = trial["objectives"]
            typer.echo(f"trial {trial['number']}: {json.dumps(trial['values'], sort_keys=True)} -> forget efficacy "
                       f"{objectives['forget_efficacy']:.3f}, retention {objectives['retention']:.3f}")

    try:
        from ..utils import check_writable_folder

        check_writable_folder(out, "--out")
        cfg = RunConfig(name=f"sweep-{method}", family=family, model=str(model) if model else None,
                        benchmark=benchmark or None, forget_percent=forget, method=method, seed=seed, device=device,
                        dtype=dtype, runs_dir=str(runs_dir), cache_dir=str(cache_dir), shipped_vanilla=shipped_vanilla,
                        world=WorldConfig(fictitious=people, real_world=real_people, seed=seed),
                        injection=InjectionConfig(seed=seed), method_cfg=MethodConfig(seed=seed),
                        eval=EvalConfig(tasks=("mcq",), seed=seed, progress=False), progress=not quiet,
                        eval_cache=eval_cache)
        summary = run_sweep(cfg, SweepConfig(method=method, trials=trials, out_dir=str(out), storage=storage,
                                             study_name=study_name, max_items_per_group=max_items,
                                             min_retention=min_retention,
                                             fixed={**({"batch_size": batch_size} if batch_size else {}),
                                                    **{f"extra.{k}": v for k, v in parse_options(option).items()}},
                                             progress=not quiet), on_trial=progress)
    except USER_ERRORS as error:
        fail(error)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"Wrote {out / 'trials.json'}, {out / 'front.json'}, {out / 'report.html'}"
               + (f" and the preset {summary['preset']} (use it: mllm-unlearn run --preset {summary['preset']})"
                  if summary.get("preset") else ""))


@app.command()
def export(
    source: Annotated[Path, typer.Argument(
        help="A run folder (RUN_DIR, holding results.json and edit/) or a saved edit.")],
    out: Annotated[Path, typer.Option(help="New folder for the unlearned checkpoint.")],
    model: Annotated[Optional[Path], typer.Option(
        help="The model the edit was made on (default: a run folder's model).")] = None,
    device: Device = "cpu",
    dtype: Dtype = RunConfig.dtype,
    peft_adapter: Annotated[bool, typer.Option(
        help="For a LoRA edit (a run with --lora): write a standard peft adapter folder (the LoRA factors, "
             "megabytes; PeftModel.from_pretrained(model, OUT) loads it) instead of a whole checkpoint.")] = False,
) -> None:
    """Bake an edit into its model and save the unlearned checkpoint (from_pretrained loads it;
    unlearning.json beside it says what was removed and how; --dtype: the saved weights' dtype), or
    with --peft-adapter write a LoRA edit as a peft adapter."""
    from ..interventions import load_edit
    from ..interventions.base import refuse_nonfinite, saved_tensors
    from ..jobs.export import export_peft_adapter, export_unlearned_model
    from ..jobs.run_folder import check_edit_matches
    from ..models import load_vlm
    from ..report import load_results
    from ..utils import check_writable_folder

    try:
        edit_dir, base = source, model
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist (expected a run folder or a saved edit)")
        check_writable_folder(out, "--out")
        if (source / "results.json").is_file():
            edit_dir = source / "edit"
            results = load_results(source)
            check_edit_matches(source, results, "export")  # the edit its figures belong to, nothing else
            if base is None:
                recorded = results.get("config", {}).get("model_path")
                if not recorded:
                    raise ValueError(f"{source / 'results.json'} records no config.model_path: "
                                     "say which model the edit was made on with --model")
                base = Path(recorded)
        if base is None:
            raise ValueError(f"{source} is not a run folder (no results.json): say which model it edits with --model")
        refuse_nonfinite(saved_tensors(edit_dir), f"export {edit_dir}")  # never a NaN checkpoint
        edit = load_edit(edit_dir)
        if peft_adapter:
            export_peft_adapter(edit, out, base_model=str(base))
            typer.echo(f"Wrote the peft adapter {out} ({edit.kind} edit of {base}; "
                       f"PeftModel.from_pretrained(model, '{out}') loads it)")
            return
        if out.exists():
            raise FileExistsError(f"{out} already exists: choose a new folder for the unlearned checkpoint")
        vlm = load_vlm(base, device=device, dtype=dtype, training=False)
        export_unlearned_model(vlm, edit, out, base_model=str(base))
    except USER_ERRORS as error:
        fail(error)
    typer.echo(f"Wrote the unlearned checkpoint {out} ({edit.kind} edit of {base} baked in)")


@app.command()
def attack(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holding results.json and edit/).")],
    attacks: Attacks = ",".join(AttackConfig.attacks),
    edit: Annotated[Optional[Path], typer.Option(
        help="Attack this instead of the run's edit: a saved edit or an unlearned checkpoint of the run's "
             "model.")] = None,
    quant_group_size: QuantGroupSize = AttackConfig.quant_group_size,
    certificate_margin: CertificateMargin = AttackConfig.margin,
    device: Device = RunConfig.device,
    quiet: Quiet = False,
) -> None:
    """Run the attack battery on a finished run (its model and edit, or --edit): updates RUN_DIR's
    results.json, report.md, report.html and writes certificate.json. Benign relearning takes the
    run's relearning settings (steps, lr, LoRA or full)."""
    from ..jobs.attack import attack_existing_run
    from ..jobs.results import CERTIFICATE_FILE

    try:
        from ..report import load_results
        from ..training.loop import LoraOptions

        config = load_results(run_dir).get("config") or {}
        battery, recorded = config.get("attacks") or {}, config.get("relearn") or {}
        # Benign relearning as the run's battery had it, else as the run's relearning attack.
        settings = ({k: battery.get(f"benign_{k}") for k in ("steps", "lr", "lora")} if battery else
                    {"steps": recorded.get("steps", RelearnConfig.steps), "lr": recorded.get("lr"),
                     "lora": recorded.get("lora", AUTO)})
        lora = settings["lora"]
        relearn = {**settings, "lora": LoraOptions(**lora) if isinstance(lora, dict) else lora}
        cfg = attack_options(attacks, quant_group_size, certificate_margin, 0, quiet, relearn)
        if cfg is None:
            raise ValueError("--attacks none: nothing to run")
        attack_existing_run(run_dir, cfg, edit, device)
    except USER_ERRORS as error:
        fail(error)
    typer.echo((run_dir / "report.md").read_text())
    typer.echo(f"Wrote {run_dir / 'results.json'}, {run_dir / 'report.md'}, {run_dir / 'report.html'}"
               + (f" and {run_dir / CERTIFICATE_FILE}" if (run_dir / CERTIFICATE_FILE).is_file() else ""))


@app.command()
def sequence(
    run_dir: Annotated[Optional[Path], typer.Argument(
        help="With --undo: the sequence run folder to undo a request of.")] = None,
    undo: Annotated[Optional[int], typer.Option(
        min=1, help="Remove request N (1-based) from RUN_DIR's edit: writes RUN_DIR/edit-without-request-N and "
                    "scores it.")] = None,
    approximate: Annotated[bool, typer.Option(
        help="--undo of a request later weight changes were trained on top of: subtract its weight change from "
             "theirs (task arithmetic).")] = False,
    replay: Annotated[bool, typer.Option(
        help="--undo exactly for any method: run the later requests again without it (into "
             "RUNS_DIR/NAME-without-request-N; earlier parts reused).")] = False,
    name: Name = "sequence",
    requests: Annotated[Optional[Path], typer.Option(
        help="Person-ID groups, one request per line (IDs separated by commas or spaces) or a JSON list of "
             "lists; default: one request per forget person, in the forget split's order.")] = None,
    method: Method = None,
    preset: Preset = None,
    lr: Lr = None,
    epochs: Epochs = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    option: MethodOption = [],
    context: Annotated[str, typer.Option(
        help="What each request is computed on: auto (the sequential model for weight-changing methods, the "
             "unedited model for mask and steering methods: exact undo) or all (the sequential model for every "
             "method).")] = SequenceConfig.context,
    tasks: Tasks = ",".join(SequenceConfig.tasks),
    retain_items: Annotated[int, typer.Option(
        help="Retain questions per modality and task in the evaluation subset (0: all).",
    )] = SequenceConfig.retain_items,
    real_world_items: Annotated[int, typer.Option(
        help="Real-world questions per modality and task (0: all).")] = SequenceConfig.real_world_items,
    max_new_tokens: MaxNewTokens = None,
    model: Model = None,
    benchmark: Benchmark = None,
    forget: Forget = RunConfig.forget_percent,
    family: Family = RunConfig.family,
    seed: Seed = RunConfig.seed,
    device: Device = RunConfig.device,
    dtype: Dtype = RunConfig.dtype,
    runs_dir: RunsDir = Path(RunConfig.runs_dir),
    cache_dir: CacheDir = Path(RunConfig.cache_dir),
    shipped_vanilla: ShippedVanilla = RunConfig.shipped_vanilla,
    eval_cache: EvalCache = RunConfig.eval_cache,
    attacks: Attacks = "none",
    quiet: Quiet = False,
) -> None:
    """Deletion requests one after another: the forget people in K requests, each unlearned on the
    model the earlier ones left and verified; one composite edit; --undo removes a request. The
    battery (--attacks, off by default) attacks the model after the last request, probing every
    requested person."""
    from ..data.mllmu import BenchmarkFormatError
    from ..jobs.sequence import run_sequence, undo_request
    from ..methods.base import UnlearningDiverged

    try:
        if undo is not None or run_dir is not None:
            if undo is None or run_dir is None:
                raise ValueError("--undo N takes the sequence run folder as its argument: "
                                 "mllm-unlearn sequence RUN_DIR --undo N")
            if replay and approximate:
                raise ValueError("--replay (exact, recomputes the later requests) and --approximate exclude each other")
            if replay:
                from ..jobs.sequence import replay_without

                record = replay_without(run_dir, undo)
                typer.echo((Path(record["replayed_into"]) / "report.md").read_text())
                typer.echo(f"Removed request {undo} ({', '.join(record['people'])}) exactly by running the "
                           f"{record['recomputed_requests']} later request(s) again; wrote {record['replayed_into']}")
                return
            record = undo_request(run_dir, undo, approximate=approximate)
            typer.echo((run_dir / "report.md").read_text())
            typer.echo(f"Removed request {undo} ({', '.join(record['people'])}) "
                       f"{'exactly' if record['exact'] else 'approximately'}; wrote {record['edit_path']}")
            return
        preset_file, method = _preset_and_method(preset, method)
        from ..methods.defaults import DEFAULT_METHOD

        overrides = {k: v for k, v in {"lr": lr, "epochs": epochs, "max_steps": max_steps,
                                       "batch_size": batch_size}.items() if v is not None}
        overrides.update(progress=not quiet, extra=parse_options(option))
        task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
        cfg = RunConfig(name=name, family=family, model=str(model) if model else None, benchmark=benchmark or None,
                        forget_percent=forget, method=method or DEFAULT_METHOD, method_cfg=None,
                        method_overrides=overrides, seed=seed, device=device, dtype=dtype, runs_dir=str(runs_dir),
                        cache_dir=str(cache_dir), shipped_vanilla=shipped_vanilla, world=WorldConfig(seed=seed),
                        injection=_injection_config(seed, None, None),
                        eval=EvalConfig(tasks=task_list, max_new_tokens=max_new_tokens, seed=seed, progress=not quiet),
                        progress=not quiet, preset=preset_file, mia=None, relearn=None, eval_cache=eval_cache)
        seq = SequenceConfig(requests_source=str(requests) if requests else None, context=context, tasks=task_list,
                             retain_items=retain_items, real_world_items=real_world_items,
                             attacks=attack_options(attacks, AttackConfig.quant_group_size, AttackConfig.margin,
                                                    seed, quiet))
        if requests is not None:
            from ..jobs.prepare import prepare_benchmark
            from ..jobs.sequence import read_requests

            seq.requests = read_requests(requests, prepare_benchmark(cfg)[0])  # before any model work
        run_sequence(cfg, seq)
    except (*USER_ERRORS, UnlearningDiverged, BenchmarkFormatError) as error:
        fail(error)
    out = runs_dir / name
    typer.echo((out / "report.md").read_text())
    typer.echo(f"Wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'} and the edit {out / 'edit'}")


@app.command()
def methods() -> None:
    """List the registered unlearning methods."""
    from ..methods import available_methods

    for name in available_methods():
        typer.echo(name)


@app.command()
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report.md and RUN_DIR/report.html from RUN_DIR/results.json."""
    from ..interventions.base import one_line
    from ..jobs.results import write_reports
    from ..jobs.run_folder import check_edit_matches
    from ..report import load_results

    try:
        results = load_results(run_dir)
        check_edit_matches(run_dir, results, "report")
        try:
            write_reports(run_dir, results)
        except (AttributeError, TypeError, KeyError, IndexError) as error:  # a field of the wrong kind
            raise ValueError(f"{Path(run_dir) / 'results.json'}: cannot render a report from it ({one_line(error)}); "
                             "was it edited by hand? Restore it or run the run again") from None
    except USER_ERRORS as error:
        fail(error)
    typer.echo(f"Wrote {run_dir / 'report.md'} and {run_dir / 'report.html'} from {run_dir / 'results.json'}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each holding results.json).")],
    out: Annotated[Path, typer.Option(
        help="Output path without extension: writes OUT.html and OUT.md.")] = Path(RunConfig.runs_dir) / "compare",
    title: Annotated[Optional[str], typer.Option(help="Report title.")] = None,
) -> None:
    """One report over several runs: results table, trade-off scatter, MIA, relearning curves, cost."""
    from ..report import compare_markdown, load_results, render_html
    from ..utils import atomic_write_text

    try:
        results = [load_results(run) for run in runs]
    except USER_ERRORS as error:
        fail(error)
    from ..report.sequence import is_sequence, render_sequence_html, sequence_compare_markdown

    base = out.with_suffix("") if out.suffix in (".html", ".md") else out
    html_path, md_path = base.parent / f"{base.name}.html", base.parent / f"{base.name}.md"
    kinds = {is_sequence(r) for r in results}
    if len(kinds) > 1:
        typer.secho("error: compare takes either sequence runs (mllm-unlearn sequence) or ordinary runs, not both",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    sequence_runs = kinds == {True}  # their curves overlaid: one figure per modality, one line per run
    text = (sequence_compare_markdown if sequence_runs else compare_markdown)(results, title)
    atomic_write_text(html_path, (render_sequence_html if sequence_runs else render_html)(results, title))
    atomic_write_text(md_path, text)
    typer.echo(text)
    typer.echo(f"Wrote {html_path} and {md_path}")


if __name__ == "__main__":
    app()
