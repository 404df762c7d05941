"""Options shared by commands mean one thing everywhere; defaults come from the config dataclasses,
whose ``__post_init__`` checks values for the Python API and the CLI alike."""
import sys

import pytest
import typer
from typer.testing import CliRunner

import mllm_unlearn.jobs.run as pipeline
import mllm_unlearn.jobs.sequence as sequence
import mllm_unlearn.jobs.sweep as sweep
from mllm_unlearn.cli import app
from mllm_unlearn.cli.options import FIELD_OPTIONS, number, option_message
from mllm_unlearn.data.synthetic import WorldConfig
from mllm_unlearn.eval.attacks.base import AttackConfig
from mllm_unlearn.eval.evaluator import EvalConfig
from mllm_unlearn.eval.mia import MIAConfig
from mllm_unlearn.eval.relearn import RelearnConfig
from mllm_unlearn.jobs.config import RunConfig
from mllm_unlearn.jobs.finetune import FinetuneJob
from mllm_unlearn.jobs.sequence import SequenceConfig
from mllm_unlearn.jobs.sweep import SweepConfig
from mllm_unlearn.recipes.finetune import FinetuneConfig
from mllm_unlearn.recipes.inject import InjectionConfig

# Options declared on several commands that differ on purpose: the attributes that may differ, and why.
EXCEPTIONS = {
    "device": ({"default"}, "export bakes an edit into a checkpoint on the CPU unless told otherwise"),
    "name": ({"default"}, "a sequence run's folder is RUNS_DIR/sequence by default"),
    "tasks": ({"default"}, "sequence evaluates after every request: multiple choice only (SequenceConfig.tasks)"),
    "attacks": ({"default"}, "sequence's attack battery is opt-in"),
    "gradient_checkpointing": ({"default"}, "run decides by the model (None); finetune's is off (FinetuneConfig)"),
    "model": ({"help"}, "finetune: the base model to fine-tune; export: the model the edit was made on"),
    "method": ({"help", "default", "required"}, "sweep: the method to tune, required"),
    "lr": ({"help"}, "finetune: overrides its recipe's, not an unlearning method's"),
    "epochs": ({"help"}, "finetune: overrides its recipe's, not an unlearning method's"),
    "batch_size": ({"help"}, "finetune: overrides its recipe's, not an unlearning method's"),
    "max_steps": ({"help"}, "finetune: overrides its recipe's, not an unlearning method's"),
    "out": ({"help", "default", "required", "type"}, "each command writes something else there"),
    "edit": ({"help"}, "run evaluates it instead of unlearning; attack attacks it instead of the run's edit"),
    "lora": ({"help", "opts", "default", "type"}, "run: --lora unlearns through adapters; finetune: --lora/--full"),
}


def declarations() -> dict[str, dict[str, dict[str, object]]]:
    """option name -> command -> its declaration's attributes."""
    found: dict[str, dict[str, dict[str, object]]] = {}
    for command_name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            found.setdefault(param.name, {})[command_name] = {
                "help": param.help, "default": param.default, "required": param.required,
                "opts": (tuple(param.opts), tuple(param.secondary_opts)), "type": type_of(param),
                "range": (getattr(param, "min", None), getattr(param, "max", None))}
    return found


def type_of(param) -> str:
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.2x; click's ParamType before
    return repr(descriptor.annotation) if descriptor is not None else param.type.name


def test_an_option_declared_on_several_commands_is_the_same_option_everywhere():
    shared = {name: by_command for name, by_command in declarations().items() if len(by_command) > 1}
    assert shared, "no option is shared: the introspection found nothing"
    for name, by_command in shared.items():
        allowed = EXCEPTIONS.get(name, (set(), ""))[0]
        for attribute in ("help", "default", "required", "opts", "type", "range"):
            values = {command: decl[attribute] for command, decl in by_command.items()}
            if attribute not in allowed:
                assert len({repr(v) for v in values.values()}) == 1, (name, attribute, values)
    stale = sorted(set(EXCEPTIONS) - set(shared))
    assert not stale, f"exceptions for options no longer shared: {stale}"


def test_dtype_means_one_thing_on_every_command():
    dtype = declarations()["dtype"]
    assert set(dtype) == {"run", "finetune", "sweep", "export", "sequence"}
    assert {d["default"] for d in dtype.values()} == {RunConfig.dtype} == {"auto"}  # sweep's was float32
    assert len({d["help"] for d in dtype.values()}) == 1 and "float16 training is refused" in dtype["sweep"]["help"]
    forget = declarations()["forget"]
    assert all("MLLMU-Bench" in d["help"] and "CLEAR" in d["help"] for d in forget.values())


def test_cli_defaults_are_the_dataclass_defaults():
    options = declarations()
    assert options["people"]["run"]["default"] == WorldConfig.fictitious
    assert options["real_people"]["sweep"]["default"] == WorldConfig.real_world
    assert options["trials"]["sweep"]["default"] == SweepConfig.trials
    assert options["retain_items"]["sequence"]["default"] == SequenceConfig.retain_items
    assert options["recipe"]["finetune"]["default"] == FinetuneConfig.recipe
    assert options["quant_group_size"]["attack"]["default"] == AttackConfig.quant_group_size
    assert options["certificate_margin"]["run"]["default"] == AttackConfig.margin
    assert options["relearn_steps"]["run"]["default"] == RelearnConfig.steps
    assert options["min_knowledge"]["run"]["default"] == RunConfig.min_knowledge
    assert number(InjectionConfig.lr) == "3e-4" and "(default 3e-4;" in options["inject_lr"]["finetune"]["help"]


def stop_everything(monkeypatch) -> list:
    seen: list = []

    def stop(cfg, *args, **kwargs):
        seen.append((cfg, *args))
        raise ValueError("stopped by the test")

    monkeypatch.setattr(pipeline, "run_pipeline", stop)
    monkeypatch.setattr(sweep, "run_sweep", stop)
    monkeypatch.setattr(sequence, "run_sequence", stop)
    return seen


def test_commands_without_options_make_the_python_apis_default_configs(tmp_path, monkeypatch):
    seen = stop_everything(monkeypatch)
    common = ["--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    for command in (["run"], ["sweep", "--method", "ga"], ["sequence"]):
        result = CliRunner().invoke(app, command + common)
        assert "stopped by the test" in result.output, (command, result.output)
    (run, *_), (swept, sweep_cfg), (seq, seq_cfg) = seen
    default = RunConfig()
    for cfg in (run, swept, seq):
        for field in ("family", "forget_percent", "seed", "device", "dtype", "shipped_vanilla", "min_knowledge",
                      "allow_unknown", "clear_tofu", "model", "benchmark"):
            assert getattr(cfg, field) == getattr(default, field), (cfg.name, field)
        assert cfg.world == WorldConfig(seed=default.seed) and cfg.injection == InjectionConfig()
    assert run.name == default.name and run.eval == EvalConfig()
    assert run.mia == MIAConfig() and run.relearn == RelearnConfig()
    assert sweep_cfg.trials == SweepConfig.trials
    assert (seq_cfg.context, seq_cfg.tasks, seq_cfg.retain_items) == (SequenceConfig.context, SequenceConfig.tasks,
                                                                      SequenceConfig.retain_items)


@pytest.mark.parametrize(("make", "field", "message"), [
    (lambda: InjectionConfig(lr=0), "InjectionConfig.lr", "must be a positive learning rate, got 0"),
    (lambda: InjectionConfig(lr=-1e-4), "InjectionConfig.lr", "must be a positive learning rate"),
    (lambda: InjectionConfig(learned_target=-0.1), "InjectionConfig.learned_target", "must be >= 0 (a share of the probe)"),
    (lambda: InjectionConfig(qa_task_forms={"generation": 0.6, "cloze": 0.6}), "InjectionConfig.qa_task_forms",
     "summing to <= 1"),
    (lambda: InjectionConfig(qa_task_forms={"cloze": -0.1}), "InjectionConfig.qa_task_forms", "probabilities >= 0"),
    (lambda: InjectionConfig(qa_task_forms={"caption": 0.1}), "InjectionConfig.qa_task_forms", "tasks among"),
    (lambda: RunConfig(dtype="fp8"), "RunConfig.dtype", "must be one of ('auto', 'float32', 'bfloat16', 'float16')"),
    (lambda: RunConfig(forget_percent=7), "RunConfig.forget_percent", "must be one of (5, 10, 15) (MLLMU-Bench)"),
    (lambda: RunConfig(min_knowledge=-1), "RunConfig.min_knowledge", "must be >= 0"),
    (lambda: FinetuneJob(out="x", dtype="half"), "FinetuneJob.dtype", "must be one of"),
    (lambda: FinetuneJob(out="x", forget_percent=20), "FinetuneJob.forget_percent", "must be one of"),
    (lambda: FinetuneConfig(save_every=0), "FinetuneConfig.save_every", "must be a number of steps >= 1"),
    (lambda: FinetuneConfig(stop_after=-2), "FinetuneConfig.stop_after", "must be a number of steps >= 1"),
    (lambda: WorldConfig(fictitious=10), "WorldConfig.fictitious", "must be >= 20"),
    (lambda: WorldConfig(real_world=0), "WorldConfig.real_world", "must be >= 1"),
    (lambda: SweepConfig(method="ga", trials=0), "SweepConfig.trials", "must be >= 1, got 0"),
    (lambda: SweepConfig(method="ga", min_retention=1.5), "SweepConfig.min_retention", "must lie in [0, 1]"),
    (lambda: SequenceConfig(real_world_items=-1), "SequenceConfig.real_world_items", "must be >= 0"),
    (lambda: AttackConfig(quant_group_size=0), "AttackConfig.quant_group_size", "must be >= 1, got 0"),
    (lambda: AttackConfig(margin=-1.0), "AttackConfig.margin", "must be >= 0 points"),
    (lambda: RelearnConfig(steps=0), "RelearnConfig.steps", "must be >= 1, got 0"),
    (lambda: RelearnConfig(lr=0.0), "RelearnConfig.lr", "must be > 0"),
    (lambda: EvalConfig(max_new_tokens=0), "EvalConfig.max_new_tokens", "must be >= 1, got 0"),
    (lambda: EvalConfig(few_shot=-1), "EvalConfig.few_shot", "must be >= 0"),
])
def test_the_python_api_checks_values_and_names_the_field(make, field, message):
    with pytest.raises(ValueError) as raised:
        make()
    text = str(raised.value)
    assert text.startswith(f"{field} ") and message in text, text
    option = option_message(raised.value)  # the CLI's wording: the option first, the field after
    assert option == f"{FIELD_OPTIONS[field]} {text[len(field) + 1:]} ({field})"


def test_every_named_option_exists():
    options = {opt for by_command in declarations().values() for decl in by_command.values() for opt in decl["opts"][0]}
    assert set(FIELD_OPTIONS.values()) <= options
    assert option_message(ValueError("few_shot (1) is an option of protocol 'ours'")) == \
        "few_shot (1) is an option of protocol 'ours'"  # not a field's error: as it is


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--inject-lr", "-1"], "--inject-lr must be a positive learning rate, got -1.0 (InjectionConfig.lr)"),
    (["run", "--task-formats", "0.6"], "(InjectionConfig.qa_task_forms)"),
    (["run", "--task-formats", "-0.1"], "--task-formats must map"),
    (["run", "--forget", "7"], "--forget must be one of (5, 10, 15) (MLLMU-Bench) or (1, 5, 10) (CLEAR), got 7"),
    (["run", "--dtype", "half"], "--dtype must be one of"),
    (["run", "--min-knowledge", "-1"], "--min-knowledge must be >= 0"),
    (["run", "--quant-group-size", "0"], "--quant-group-size must be >= 1, got 0 (AttackConfig.quant_group_size)"),
    (["run", "--certificate-margin", "-1"], "--certificate-margin must be >= 0 points"),
    (["run", "--people", "5"], "--people must be >= 20"),
    (["run", "--real-people", "0"], "--real-people must be >= 1"),
    (["run", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["sweep", "--method", "ga", "--trials", "0"], "--trials must be >= 1, got 0 (SweepConfig.trials)"),
    (["sweep", "--method", "ga", "--min-retention", "1.5"], "--min-retention must lie in [0, 1]"),
    (["sweep", "--method", "ga", "--dtype", "half"], "--dtype must be one of"),
    (["sequence", "--retain-items", "-1"], "--retain-items must be >= 0"),
    (["finetune", "--out", "OUT", "--save-every", "0"], "--save-every must be a number of steps >= 1"),
    (["finetune", "--out", "OUT", "--forget", "3"], "--forget must be one of"),
    (["finetune", "--out", "OUT", "--recipe", "builtin", "--inject-target", "2"],
     "--inject-target must lie in (0, 1], got 2.0 (InjectionConfig.learned_target)"),
])
def test_the_cli_refuses_bad_values_before_any_work_naming_option_and_field(args, message, tmp_path, monkeypatch):
    seen = stop_everything(monkeypatch)
    monkeypatch.setattr(sys.modules["mllm_unlearn.jobs.finetune"], "run_finetune", seen.append)
    args = [str(tmp_path / "out") if arg == "OUT" else arg for arg in args]
    result = CliRunner().invoke(app, args + ["--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not seen and not (tmp_path / "cache").exists()  # refused before any work
