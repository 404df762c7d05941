"""Command line: a thin layer that parses options and calls the Python API."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from .training import InjectionConfig

app = typer.Typer(add_completion=False, help="Make a multimodal LLM forget chosen knowledge, and measure it.")


def parse_options(options: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, booleans), else as text."""
    import json

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
    from .eval.relearn import AUTO
    from .training import LoraOptions

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
    from .eval.attacks import AttackConfig, parse_attacks

    names = parse_attacks(attacks)
    if not names:
        return None
    benign = {f"benign_{k}": v for k, v in (relearn or {}).items()}
    return AttackConfig(attacks=names, quant_group_size=quant_group_size, margin=margin, seed=seed, progress=not quiet,
                        **benign)


def _injection_config(seed: int, inject_epochs: int | None, pretrain_epochs: int | None,
                      task_formats: float = 0.0, inject_lr: float | None = None,
                      inject_target: float | None = None) -> InjectionConfig:
    """The knowledge-injection settings of `run` and `finetune --recipe builtin` from their options."""
    from .training import InjectionConfig

    injection = InjectionConfig(seed=seed)
    if inject_lr is not None:
        if not inject_lr > 0:
            raise ValueError(f"--inject-lr must be a positive learning rate, got {inject_lr}")
        injection = replace(injection, lr=inject_lr)
    if inject_target is not None:
        if not 0 < inject_target <= 1:
            raise ValueError(f"--inject-target must lie in (0, 1], got {inject_target}")
        injection = replace(injection, learned_target=inject_target)
    if inject_epochs is not None:
        injection = replace(injection, finetune_epochs=inject_epochs)
    if pretrain_epochs is not None:
        injection = replace(injection, pretrain_epochs=pretrain_epochs)
    if task_formats:
        injection = replace(injection, qa_task_forms={"generation": task_formats, "cloze": task_formats})
    return injection


def _preset_and_method(preset: Optional[Path], method: Optional[str]) -> tuple[Optional[dict], Optional[str]]:
    """A ``--preset`` file loaded and checked before any work (its method against ``--method``, its
    values' names), and the method it names; ``(None, method)`` without one."""
    if preset is None:
        return None, method
    from .methods import MethodConfig
    from .methods.search_spaces import apply_values
    from .sweep import load_preset

    preset_file = load_preset(preset)
    if method is not None and method != preset_file["method"]:
        raise ValueError(f"--method {method} differs from the preset's method {preset_file['method']!r} ({preset})")
    apply_values(MethodConfig(), preset_file["values"], source=f"--preset {preset}")  # bad names fail now
    return preset_file, preset_file["method"]


@app.command()
def run(
    name: str = typer.Option("default", help="Run name: results go to RUNS_DIR/NAME/."),
    family: str = typer.Option("llava", help="Tiny model family to build: llava, qwen2-vl, qwen2.5-vl."),
    model: Optional[Path] = typer.Option(None, help="Local checkpoint of a supported family (skips knowledge injection)."),
    benchmark: Optional[str] = typer.Option(
        None, help="'clear' (the built-in world in CLEAR's layout), or a directory in MLLMU-Bench's or CLEAR's layout "
                   "(detected); default: the built-in world in MLLMU-Bench's layout."),
    forget: int = typer.Option(10, help="Forget split percentage: 5, 10 or 15 (MLLMU-Bench); 1, 5 or 10 (CLEAR)."),
    tofu: bool = typer.Option(False, help="CLEAR: train on the +tofu configs (captions + TOFU text QA)."),
    gold_model: Optional[Path] = typer.Option(
        None, help="CLEAR: checkpoint fine-tuned on the retain split only, for forget quality (`mllm-unlearn finetune "
                   "--retain-only` makes one; default: trained here for tiny models)."),
    method: Optional[str] = typer.Option(None, help="Unlearning method name (default mllmeraser, chosen from the validation sweeps "
                                                        "(methods/defaults.py), or the preset's)."),
    preset: Optional[Path] = typer.Option(
        None, help="A preset file (e.g. the preset.json `mllm-unlearn sweep` writes): its values override the "
                   "method's defaults; options given here override the preset. Recorded in results.json."),
    edit: Optional[Path] = typer.Option(
        None, help="Evaluate this instead of unlearning: a saved edit (RUN_DIR/edit) or an unlearned checkpoint "
                   "of --model (made by this tool or another; compared weight by weight)."),
    lr: Optional[float] = typer.Option(None, help="Unlearning learning rate (method default if unset)."),
    epochs: Optional[int] = typer.Option(None, help="Unlearning epochs over the forget set."),
    max_steps: Optional[int] = typer.Option(None, help="Stop unlearning after this many steps."),
    batch_size: Optional[int] = typer.Option(None, help="Unlearning batch size per process (method default if unset)."),
    lora: bool = typer.Option(False, help="Unlearn through LoRA adapters (merged into the edit)."),
    shard: Optional[str] = typer.Option(
        None, help="'fsdp': full fine-tuning sharded over the processes of `accelerate launch`/torchrun with FSDP2, "
                   "each process holding 1/N of every weight (also chosen by `accelerate launch --use_fsdp`)."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in the backward pass (less memory, one more forward per step); default: on for a "
             "--model this tool did not build, off for its tiny models."),
    max_batch_tokens: Optional[int] = typer.Option(
        None, min=1, help="Localisation passes (MANU statistics, MMUnlearner's Fisher, MIP-Editor's path search) and "
                          "MLLMEraser's PGD: split each batch into parts of at most this many padded tokens "
                          "(results unchanged, less memory)."),
    option: list[str] = typer.Option([], "--option", "-o",
                                     help="Method-specific option KEY=VALUE, repeatable (e.g. -o beta=0.2 for npo)."),
    protocol: str = typer.Option(
        "ours", help="MLLMU-Bench evaluation settings: 'ours' (zero-shot, chat template, likelihood scorer) or "
                     "'mllmu' (MLLMU-Bench's eval.py exactly: its few-shot per task from Full_Set, its LLaVA prompts, "
                     "generate scorer)."),
    scorer: Optional[str] = typer.Option(
        None, help="Classification scorer: likelihood or generate (MLLMU-Bench's); default: the protocol's."),
    few_shot: int = typer.Option(0, help="--protocol ours: few-shot demonstration people per split (not scored)."),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="Greedy generation length (default: the benchmark's own, 50 on MLLMU-Bench, 300 on CLEAR)."),
    tasks: str = typer.Option("mcq,cloze,generation",
                              help="Comma-separated tasks to evaluate (CLEAR: 'generation' switches ROUGE on)."),
    people: Optional[int] = typer.Option(None, help="Fictitious people in the built-in world (default 100)."),
    real_people: Optional[int] = typer.Option(None, help="Real-world people in the built-in world (default 30)."),
    inject_epochs: Optional[int] = typer.Option(None, help="Knowledge-injection epochs on the benchmark people."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="Knowledge-injection epochs on the real-world people."),
    inject_lr: Optional[float] = typer.Option(
        None, help="Knowledge-injection learning rate (default 3e-4; 1e-3 took twice the steps to learn less: "
                   "README, 'Injection time'). Another value is another vanilla model."),
    inject_target: Optional[float] = typer.Option(
        None, help="Knowledge injection: a stage ends once this share of its probe is answered exactly "
                   "(default 0.95)."),
    task_formats: float = typer.Option(
        0.0, min=0.0, max=0.5,
        help="Knowledge injection: probability that an open-QA draw is asked with MLLMU-Bench's generation "
             "instruction, and the same for its fill-in-the-blank form (e.g. 0.25; 0 = off, the default). "
             "Teaches a from-scratch model those formats; see the README for what it costs."),
    min_knowledge: float = typer.Option(
        15.0, min=0.0, help="Knowledge check before unlearning: the vanilla model's classification accuracy on the "
                            "forget split must reach chance + this many points in each modality the method targets, "
                            "else the run stops (recorded in results.json)."),
    allow_unknown: bool = typer.Option(
        False, help="Go on when the knowledge check fails (the report says the vanilla model did not know the "
                    "forget people)."),
    mia: bool = typer.Option(True, help="Membership inference (forget vs held-out people) before and after unlearning."),
    relearn: bool = typer.Option(True, help="Relearning attack on the unlearned model (a curve over steps)."),
    relearn_steps: int = typer.Option(20, help="Fine-tuning steps of the relearning attack."),
    relearn_lr: Optional[float] = typer.Option(
        None, help="Relearning attack learning rate (default 1e-3 with full fine-tuning, 1e-4 with LoRA)."),
    relearn_lora: Optional[str] = typer.Option(
        None, help="Relearning attack through LoRA adapters of this rank (e.g. 16), or 'off' for full fine-tuning "
                   "(snapshot on CPU). Default: full on models this tool built, rank 16 on any other model."),
    attacks: str = typer.Option(
        "all", help="Attack battery and forgetting certificate (certificate.json): 'all', 'none', or a comma list of "
                    "quantization, logit_lens, prompt, cross_modal, benign_relearn."),
    quant_group_size: int = typer.Option(128, min=1, help="Quantization attack: weights per group of each output row."),
    certificate_margin: float = typer.Option(
        10.0, min=0.0, help="Certificate: a probe still recalls a person above chance + this many points (and p <= 0.05)."),
    seed: int = typer.Option(0, help="Seed for everything."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option(
        "auto", help="auto (the default: the checkpoint's own dtype from its config.json, float32 for models this tool "
                     "built; a float16 checkpoint loads as bfloat16), float32, bfloat16 or float16. bfloat16 weights "
                     "train as fp32 master weights with a bf16 forward; float16 training is refused."),
    max_pixels: Optional[int] = typer.Option(
        None, help="Qwen2-VL / Qwen2.5-VL: cap on each image's pixels (the processor's max_pixels; default: the "
                   "checkpoint's own, 12845056 for the 7B Instruct models). Fewer pixels, fewer image tokens, less "
                   "memory. Refused for LLaVA, whose images have one fixed size."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are written."),
    cache_dir: Path = typer.Option(Path(".cache/mllm_unlearn"), help="Cache of generated benchmarks and vanilla models."),
    shipped_vanilla: bool = typer.Option(
        True, "--shipped-vanilla/--no-shipped-vanilla",
        help="Start from the vanilla model shipped with mllm-unlearn when it is the one this run would train (the "
             "default world and recipe) and the cache lacks it; --no-shipped-vanilla trains it here (~6 min on 2 cores)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Build or load the vanilla model, evaluate, unlearn the forget split (or take a given --edit),
    evaluate again, attack, write a report."""
    from .data import WorldConfig
    from .eval import EvalConfig
    from .eval.mia import MIAConfig
    from .eval.relearn import RelearnConfig
    from .methods.base import UnlearningDiverged
    from .pipeline import RunConfig, run_pipeline
    from .training import LoraOptions

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
        from .methods.defaults import DEFAULT_METHOD

        method = method or DEFAULT_METHOD
        world = WorldConfig(fictitious=people or 100, real_world=real_people or 30, seed=seed)
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
                        device=device, dtype=dtype, max_pixels=max_pixels, runs_dir=str(runs_dir), cache_dir=str(cache_dir), shipped_vanilla=shipped_vanilla, world=world,
                        injection=injection, eval=eval_cfg, progress=not quiet,
                        mia=MIAConfig() if mia else None,
                        relearn=RelearnConfig(steps=relearn_steps, eval_every=max(1, relearn_steps // 4), seed=seed,
                                              lr=relearn_lr, lora=relearn_mode) if relearn else None,
                        attacks=battery, preset=preset_file, min_knowledge=min_knowledge, allow_unknown=allow_unknown)
        results = run_pipeline(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError, UnlearningDiverged) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    from .utils import is_main_process

    if not is_main_process():
        return
    run_dir = runs_dir / name
    typer.echo((run_dir / "report.md").read_text())
    typer.echo(f"Wrote {run_dir / 'results.json'}, {run_dir / 'report.md'} and {run_dir / 'report.html'}")


@app.command()
def finetune(
    out: Path = typer.Option(..., help="New folder for the fine-tuned checkpoint (finetune.json, written last, marks "
                                       "it finished)."),
    model: Optional[Path] = typer.Option(
        None, help="Base checkpoint of a supported family (e.g. llava-1.5-7b-hf); default: a fresh tiny model of "
                   "--family built here, its tokenizer from the benchmark's texts."),
    benchmark: Optional[str] = typer.Option(
        None, help="A directory in MLLMU-Bench's or CLEAR's layout, or 'clear'; default: the built-in world."),
    recipe: str = typer.Option(
        "mllmu", help="mllmu (MLLMU-Bench's finetune.py: LoRA r16 a16, lr 2e-5, 5 epochs, batch 4), clear (CLEAR's: "
                      "LoRA r8 a32, lr 1e-5, 3 epochs, batch 4 x accumulation 2, one warmup epoch) or builtin (the "
                      "tool's knowledge-injection curriculum for tiny models)."),
    retain_only: bool = typer.Option(
        False, help="Train on the retain split only (the forget people left out): the gold model of CLEAR's forget "
                    "quality and NPO's retain reference (`run --gold-model`, `-o reference=`)."),
    forget: int = typer.Option(10, help="--retain-only: the forget split whose people are left out (as `run --forget`)."),
    tofu: bool = typer.Option(False, help="CLEAR: train on the +tofu configs (captions + TOFU text QA)."),
    lora: Optional[bool] = typer.Option(None, "--lora/--full",
                                        help="LoRA adapters (the recipe's rank) or full fine-tuning; default: the "
                                             "recipe's (mllmu, clear: LoRA; builtin: full)."),
    loss_on: Optional[str] = typer.Option(
        None, help="'answer' (default: the answer tokens only) or 'prompt+answer' (MLLMU-Bench's published loss)."),
    keep_adapter: bool = typer.Option(False, help="Write a peft adapter folder (PeftModel.from_pretrained(base, OUT)) "
                                                  "instead of the merged checkpoint."),
    epochs: Optional[int] = typer.Option(None, help="Override the recipe's epochs (recorded)."),
    lr: Optional[float] = typer.Option(None, help="Override the recipe's learning rate (recorded)."),
    batch_size: Optional[int] = typer.Option(None, help="Override the recipe's batch size per process (recorded)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (the schedule too)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
    shard: Optional[str] = typer.Option(None, help="'fsdp': full fine-tuning sharded over the processes of "
                                                   "`accelerate launch` with FSDP2 (with --full)."),
    save_every: Optional[int] = typer.Option(None, min=1, help="Save a resumable state every N optimizer steps (model, "
                                                               "optimizer, scheduler, RNG, data position) in "
                                                               "OUT.finetune-state."),
    resume: bool = typer.Option(False, help="Continue the fine-tune whose state OUT.finetune-state holds."),
    stop_after: Optional[int] = typer.Option(None, min=1, help="Pause after this many steps in all, the state saved "
                                                               "(a time-sliced job); --resume continues."),
    family: str = typer.Option("llava", help="Without --model: the tiny model family to build."),
    people: Optional[int] = typer.Option(None, help="Built-in world: fictitious people (default 100)."),
    real_people: Optional[int] = typer.Option(None, help="Built-in world: real-world people (default 30)."),
    inject_epochs: Optional[int] = typer.Option(None, help="--recipe builtin: epochs on the benchmark people."),
    pretrain_epochs: Optional[int] = typer.Option(None, help="--recipe builtin: epochs on the real-world people."),
    inject_lr: Optional[float] = typer.Option(None, help="--recipe builtin: the curriculum's learning rate "
                                                         "(default 3e-4; README, 'Injection time')."),
    inject_target: Optional[float] = typer.Option(None, help="--recipe builtin: the probe share a stage must "
                                                             "answer exactly to end (default 0.95)."),
    seed: int = typer.Option(0, help="Seed for everything (the built-in world's and the forget split's too)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the checkpoint's own; float16 loads as bfloat16), float32 or "
                                           "bfloat16 (trained as fp32 master weights with a bf16 forward)."),
    max_pixels: Optional[int] = typer.Option(None, help="Qwen families: cap on each image's pixels."),
    cache_dir: Path = typer.Option(Path(".cache/mllm_unlearn"), help="Cache of generated benchmarks."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Fine-tune a base model on a benchmark's people (the vanilla model; with --retain-only the
    gold model) with a benchmark's recipe; writes a checkpoint and finetune.json."""
    from .data import WorldConfig
    from .training.finetune import FinetuneConfig, FinetuneJob, run_finetune
    from .training.loop import TrainingPaused

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
                          family=family, world=WorldConfig(fictitious=people or 100, real_world=real_people or 30,
                                                           seed=seed),
                          forget_percent=forget, clear_tofu=tofu, device=device, dtype=dtype, max_pixels=max_pixels,
                          cache_dir=str(cache_dir))
        meta = run_finetune(job)
    except TrainingPaused as paused:
        typer.echo(f"{paused} (mllm-unlearn finetune ... --resume)")
        return
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    from .utils import is_main_process

    if is_main_process():
        curve = meta["loss_curve"]
        last = curve[-1] if isinstance(curve, list) and curve else None
        typer.echo(f"Wrote {meta['output']} {out} (recipe {meta['recipe']['name']}"
                   f"{', retain split only' if retain_only else ''}, {meta['steps']} steps"
                   + (f", last loss {last:.4f}" if last is not None else "") + f") and {out / 'finetune.json'}")


@app.command()
def sweep(
    method: str = typer.Option(..., help="The method to tune (its search space: methods/search_spaces.py)."),
    trials: int = typer.Option(20, min=1, help="Finished trials wanted: a resumed sweep runs only the missing ones."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default RUNS_DIR/sweep-METHOD): trials.json, "
                                                  "front.json, preset.json, report.md, report.html, study.db."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL or SQLite file, shareable by several "
                                                     "processes (default OUT/study.db)."),
    study_name: Optional[str] = typer.Option(None, help="Study name in the storage (default: the method's name)."),
    family: str = typer.Option("llava", help="Tiny model family to build: llava, qwen2-vl, qwen2.5-vl."),
    model: Optional[Path] = typer.Option(None, help="Local checkpoint holding the knowledge (skips injection)."),
    benchmark: Optional[str] = typer.Option(
        None, help="A directory in MLLMU-Bench's layout (its validation split is carved out of the retain and "
                   "real-world people, seeded; see the README); default: the built-in world (its validation people)."),
    forget: int = typer.Option(10, help="Forget split percentage of the benchmark (5, 10 or 15)."),
    max_items: Optional[int] = typer.Option(None, help="Subsample each validation split x modality to this many "
                                                       "questions (seeded)."),
    min_retention: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="Choose the preset among front trials keeping at least this retention "
                                     "(e.g. 0.95; the whole front when none does). Changes only the choice."),
    batch_size: Optional[int] = typer.Option(None, help="Unlearning batch size of every trial (method default if "
                                                        "unset and not searched)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE every trial uses, where "
                                                               "the search space does not search it (repeatable)."),
    people: Optional[int] = typer.Option(None, help="Fictitious people in the built-in world (default 100)."),
    real_people: Optional[int] = typer.Option(None, help="Real-world people in the built-in world (default 30)."),
    seed: int = typer.Option(0, help="Seed for everything: the same seed gives the same trials."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where the default output folder goes."),
    cache_dir: Path = typer.Option(Path(".cache/mllm_unlearn"), help="Cache of generated benchmarks and vanilla models."),
    shipped_vanilla: bool = typer.Option(
        True, "--shipped-vanilla/--no-shipped-vanilla",
        help="Start from the vanilla model shipped with mllm-unlearn when it is the one this run would train (the "
             "default world and recipe) and the cache lacks it; --no-shipped-vanilla trains it here (~6 min on 2 cores)."),
    quiet: bool = typer.Option(False, help="No progress lines."),
) -> None:
    """Search a method's hyperparameters on the validation split (chance-corrected forget efficacy vs
    retention, Optuna), resumable; writes the Pareto front and the chosen preset (run --preset)."""
    from .data import WorldConfig
    from .eval import EvalConfig
    from .methods import MethodConfig
    from .pipeline import RunConfig
    from .sweep import SweepConfig, run_sweep
    from .training import InjectionConfig

    out = out or runs_dir / f"sweep-{method}"

    def progress(trial: dict) -> None:
        if not quiet and trial.get("objectives"):
            objectives = trial["objectives"]
            typer.echo(f"trial {trial['number']}: {json.dumps(trial['values'], sort_keys=True)} -> forget efficacy "
                       f"{objectives['forget_efficacy']:.3f}, retention {objectives['retention']:.3f}")

    try:
        cfg = RunConfig(name=f"sweep-{method}", family=family, model=str(model) if model else None,
                        benchmark=benchmark or None, forget_percent=forget, method=method, seed=seed, device=device,
                        dtype=dtype, runs_dir=str(runs_dir), cache_dir=str(cache_dir), shipped_vanilla=shipped_vanilla,
                        world=WorldConfig(fictitious=people or 100, real_world=real_people or 30, seed=seed),
                        injection=InjectionConfig(seed=seed), method_cfg=MethodConfig(seed=seed),
                        eval=EvalConfig(tasks=("mcq",), seed=seed, progress=False), progress=not quiet)
        summary = run_sweep(cfg, SweepConfig(method=method, trials=trials, out_dir=str(out), storage=storage,
                                             study_name=study_name, max_items_per_group=max_items,
                                             min_retention=min_retention,
                                             fixed={**({"batch_size": batch_size} if batch_size else {}),
                                                    **{f"extra.{k}": v for k, v in parse_options(option).items()}},
                                             progress=not quiet), on_trial=progress)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"Wrote {out / 'trials.json'}, {out / 'front.json'}, {out / 'report.html'}"
               + (f" and the preset {summary['preset']} (use it: mllm-unlearn run --preset {summary['preset']})"
                  if summary.get("preset") else ""))


@app.command()
def export(
    source: Path = typer.Argument(..., help="A run folder (RUN_DIR, holding results.json and edit/) or a saved edit."),
    out: Path = typer.Option(..., help="New folder for the unlearned checkpoint."),
    model: Optional[Path] = typer.Option(None, help="The model the edit was made on (default: a run folder's model)."),
    device: str = typer.Option("cpu", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (the model's own), float32, bfloat16 or float16: the saved weights' dtype."),
    peft_adapter: bool = typer.Option(
        False, help="For a LoRA edit (a run with --lora): write a standard peft adapter folder (the LoRA factors, "
                    "megabytes; PeftModel.from_pretrained(model, OUT) loads it) instead of a whole checkpoint."),
) -> None:
    """Bake an edit into its model and save the unlearned checkpoint (from_pretrained loads it;
    unlearning.json beside it says what was removed and how), or with --peft-adapter write a
    LoRA edit as a peft adapter."""
    from .interventions import load_edit
    from .models import load_vlm
    from .pipeline import export_peft_adapter, export_unlearned_model
    from .report import load_results

    try:
        edit_dir, base = source, model
        if not source.exists():
            raise FileNotFoundError(f"{source} does not exist (expected a run folder or a saved edit)")
        if (source / "results.json").is_file():
            edit_dir = source / "edit"
            if base is None:
                recorded = load_results(source).get("config", {}).get("model_path")
                if not recorded:
                    raise ValueError(f"{source / 'results.json'} records no config.model_path: "
                                     "say which model the edit was made on with --model")
                base = Path(recorded)
        if base is None:
            raise ValueError(f"{source} is not a run folder (no results.json): say which model it edits with --model")
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
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo(f"Wrote the unlearned checkpoint {out} ({edit.kind} edit of {base} baked in)")


@app.command()
def attack(
    run_dir: Path = typer.Argument(..., help="A run folder (holding results.json and edit/)."),
    attacks: str = typer.Option("all", help="'all' or a comma list of quantization, logit_lens, prompt, cross_modal, "
                                            "benign_relearn."),
    edit: Optional[Path] = typer.Option(
        None, help="Attack this instead of the run's edit: a saved edit or an unlearned checkpoint of the run's model."),
    quant_group_size: int = typer.Option(128, min=1, help="Quantization attack: weights per group of each output row."),
    certificate_margin: float = typer.Option(
        10.0, min=0.0, help="Certificate: a probe still recalls a person above chance + this many points (and p <= 0.05)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Run the attack battery on a finished run (its model and edit, or --edit): updates RUN_DIR's
    results.json, report.md, report.html and writes certificate.json. Benign relearning takes the
    run's relearning settings (steps, lr, LoRA or full)."""
    from .pipeline import CERTIFICATE_FILE, attack_existing_run

    try:
        from .report import load_results
        from .training import LoraOptions

        config = load_results(run_dir).get("config") or {}
        battery, recorded = config.get("attacks") or {}, config.get("relearn") or {}
        # Benign relearning as the run's battery had it, else as the run's relearning attack.
        settings = ({k: battery.get(f"benign_{k}") for k in ("steps", "lr", "lora")} if battery else
                    {"steps": recorded.get("steps", 20), "lr": recorded.get("lr"), "lora": recorded.get("lora", "auto")})
        lora = settings["lora"]
        relearn = {**settings, "lora": LoraOptions(**lora) if isinstance(lora, dict) else lora}
        cfg = attack_options(attacks, quant_group_size, certificate_margin, 0, quiet, relearn)
        if cfg is None:
            raise ValueError("--attacks none: nothing to run")
        attack_existing_run(run_dir, cfg, edit, device)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    typer.echo((run_dir / "report.md").read_text())
    typer.echo(f"Wrote {run_dir / 'results.json'}, {run_dir / 'report.md'}, {run_dir / 'report.html'}"
               + (f" and {run_dir / CERTIFICATE_FILE}" if (run_dir / CERTIFICATE_FILE).is_file() else ""))


@app.command()
def sequence(
    run_dir: Optional[Path] = typer.Argument(None, help="With --undo: the sequence run folder to undo a request of."),
    undo: Optional[int] = typer.Option(None, min=1, help="Remove request N (1-based) from RUN_DIR's edit: writes "
                                                         "RUN_DIR/edit-without-request-N and scores it."),
    approximate: bool = typer.Option(False, help="--undo of a request later weight changes were trained on top of: "
                                                 "subtract its weight change from theirs (task arithmetic)."),
    replay: bool = typer.Option(False, help="--undo exactly for any method: run the later requests again without it "
                                            "(into RUNS_DIR/NAME-without-request-N; earlier parts reused)."),
    name: str = typer.Option("sequence", help="Run name: results go to RUNS_DIR/NAME/."),
    requests: Optional[Path] = typer.Option(
        None, help="Person-ID groups, one request per line (IDs separated by commas or spaces) or a JSON list of "
                   "lists; default: one request per forget person, in the forget split's order."),
    method: Optional[str] = typer.Option(None, help="Unlearning method (default mllmeraser, or the preset's)."),
    preset: Optional[Path] = typer.Option(None, help="A preset file (as `run --preset`)."),
    lr: Optional[float] = typer.Option(None, help="Unlearning learning rate (method default if unset)."),
    epochs: Optional[int] = typer.Option(None, help="Unlearning epochs over each request's forget items."),
    max_steps: Optional[int] = typer.Option(None, help="Stop each request's unlearning after this many steps."),
    batch_size: Optional[int] = typer.Option(None, help="Unlearning batch size (method default if unset)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Method-specific option KEY=VALUE, repeatable."),
    context: str = typer.Option("auto", help="What each request is computed on: auto (the sequential model for "
                                             "weight-changing methods, the unedited model for mask and steering "
                                             "methods: exact undo) or all (the sequential model for every method)."),
    tasks: str = typer.Option("mcq", help="Tasks evaluated after each request (mcq,cloze,generation)."),
    retain_items: int = typer.Option(60, min=0, help="Retain questions per modality and task in the evaluation "
                                                     "subset (0: all)."),
    real_world_items: int = typer.Option(60, min=0, help="Real-world questions per modality and task (0: all)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Greedy generation length (cloze, generation)."),
    model: Optional[Path] = typer.Option(None, help="Local checkpoint of a supported family (skips injection)."),
    benchmark: Optional[str] = typer.Option(None, help="A directory in MLLMU-Bench's layout; default: the built-in "
                                                       "world."),
    forget: int = typer.Option(10, help="Forget split percentage: whose people the requests name."),
    family: str = typer.Option("llava", help="Tiny model family (built-in world)."),
    seed: int = typer.Option(0, help="Seed for everything."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16 or float16 (as `run`)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are written."),
    cache_dir: Path = typer.Option(Path(".cache/mllm_unlearn"), help="Cache of generated benchmarks and vanilla models."),
    shipped_vanilla: bool = typer.Option(
        True, "--shipped-vanilla/--no-shipped-vanilla",
        help="Start from the vanilla model shipped with mllm-unlearn when it is the one this run would train (the "
             "default world and recipe) and the cache lacks it; --no-shipped-vanilla trains it here (~6 min on 2 cores)."),
    attacks: str = typer.Option(
        "none", help="The attack battery and forgetting certificate on the model after the last request, probing "
                     "every requested person: 'none' (default), 'all', or a comma list (as `run --attacks`)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Deletion requests one after another: the forget people in K requests, each unlearned on the
    model the earlier ones left and verified; one composite edit; --undo removes a request."""
    from .data import WorldConfig
    from .data.mllmu import BenchmarkFormatError
    from .eval import EvalConfig
    from .methods.base import UnlearningDiverged
    from .pipeline import RunConfig
    from .sequence import SequenceConfig, run_sequence, undo_request

    try:
        if undo is not None or run_dir is not None:
            if undo is None or run_dir is None:
                raise ValueError("--undo N takes the sequence run folder as its argument: "
                                 "mllm-unlearn sequence RUN_DIR --undo N")
            if replay and approximate:
                raise ValueError("--replay (exact, recomputes the later requests) and --approximate exclude each other")
            if replay:
                from .sequence import replay_without

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
        from .methods.defaults import DEFAULT_METHOD

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
                        progress=not quiet, preset=preset_file, mia=None, relearn=None)
        seq = SequenceConfig(requests_source=str(requests) if requests else None, context=context, tasks=task_list,
                             retain_items=retain_items, real_world_items=real_world_items,
                             attacks=attack_options(attacks, 128, 10.0, seed, quiet))
        if requests is not None:
            from .pipeline import prepare_benchmark
            from .sequence import read_requests

            seq.requests = read_requests(requests, prepare_benchmark(cfg)[0])  # before any model work
        run_sequence(cfg, seq)
    except (ValueError, FileNotFoundError, FloatingPointError, UnlearningDiverged, BenchmarkFormatError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    out = runs_dir / name
    typer.echo((out / "report.md").read_text())
    typer.echo(f"Wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'} and the edit {out / 'edit'}")


@app.command()
def methods() -> None:
    """List the registered unlearning methods."""
    from .methods import available_methods

    for name in available_methods():
        typer.echo(name)


@app.command()
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report.md and RUN_DIR/report.html from RUN_DIR/results.json."""
    from .report import load_results, render_html, render_markdown
    from .utils import atomic_write_text

    try:
        results = load_results(run_dir)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    from .report.sequence import is_sequence, render_sequence_html, render_sequence_markdown

    sequence_run = is_sequence(results)  # a `mllm-unlearn sequence` run has reports of its own
    text = (render_sequence_markdown if sequence_run else render_markdown)(results)
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "report.html", (render_sequence_html if sequence_run else render_html)([results]))
    typer.echo(text)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (each holding results.json)."),
    out: Path = typer.Option(Path("runs/compare"), help="Output path without extension: writes OUT.html and OUT.md."),
    title: Optional[str] = typer.Option(None, help="Report title."),
) -> None:
    """One report over several runs: results table, trade-off scatter, MIA, relearning curves, cost."""
    from .report import compare_markdown, load_results, render_html
    from .utils import atomic_write_text

    try:
        results = [load_results(run) for run in runs]
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    from .report.sequence import is_sequence, render_sequence_html, sequence_compare_markdown

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
