"""Sharded training (FSDP2, ``--shard fsdp``) on 2 CPU processes (gloo) matches 1 process.

GradDiff, RMU and MMUnlearner run with gradient checkpointing (inside the FSDP2 units), the others
without.

Both runs see the same global batch (1 process × 8 = 2 processes × 4), so the math is the same:
FSDP2 averages the gradient slices, clipping reduces the norm over all slices, and AdamW updates
each slice element-wise. What differs is float summation order, and AdamW divides by sqrt(v): an
entry whose true gradient is ~0 (a key bias, invariant under softmax) moves by ±lr × float noise.
Measured here: at most 2.6e-5 apart, on a few entries of a few tensors (GA, GradDiff, KL, NPO,
MMUnlearner; RMU and MIP-Editor, which train a few matrices, within 2e-7). So the weights are compared with rtol 1e-5
and atol 1e-4, one percent
of one AdamW step (lr 1e-2); the loss curves (at most 2.2e-6 apart) with rtol 1e-5, atol 5e-6.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_unlearn.methods import MethodConfig, get_method
from mllm_unlearn.training.loop import LoraOptions

HELPER = Path(__file__).with_name("fsdp_edit.py")
# KL and RMU use the caller's (untouched) model as their frozen reference when sharded; NPO its
# precomputed log-probabilities; MIP-Editor's RMisU the same misdirection as RMU.
METHODS = ("ga", "graddiff", "kl", "npo", "rmu", "mmunlearner", "mip-editor")


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}


def test_two_sharded_processes_give_the_one_process_edit_and_restore_the_model(world_dir, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torch's launcher must be installed with torch"
    mask = tmp_path / "mask.safetensors"  # MMUnlearner's mask, made by the 1-process run, reused sharded
    methods = ",".join(METHODS)
    subprocess.run([sys.executable, str(HELPER), str(tmp_path / "one.pt"), methods, "8", str(world_dir), str(mask)],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(HELPER), str(tmp_path / "two.pt"),
                    methods, "4", str(world_dir), str(mask), "fsdp"], check=True, env=_env(), stdout=subprocess.DEVNULL)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["processes"] == 1 and two["processes"] == 2
    for method in METHODS:
        single, sharded = one["results"][method], two["results"][method]
        # While training, each process held about half of every decoder weight (dim 0 split in two).
        decoder = {n: v for n, v in sharded["held"].items() if ".language_model.layers." in n and n.endswith("weight")}
        assert decoder, method
        for name, (local, full) in decoder.items():
            assert 0.4 * full <= local <= 0.6 * full, (method, name, local, full)
        assert all(local == full for local, full in single["held"].values())  # unsharded: whole tensors
        # The caller's model came back unsharded (plain parameters) and bitwise as it was.
        assert sharded["restored"] and sharded["plain_parameters"] and single["restored"], method
        assert sharded["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=5e-6), method
        assert sorted(sharded["tensors"]) == sorted(single["tensors"]) and single["tensors"], method
        assert sharded["paths"] == single["paths"], method  # MIP-Editor's path search, shared out
        for name, value in single["tensors"].items():
            # atol 1e-4 = 1% of one lr-1e-2 step: KL measured 5.4e-5 on one of 2304 entries of a
            # weight whose gradient there is ~0 (AdamW divides float noise by sqrt(v)).
            torch.testing.assert_close(sharded["tensors"][name], value, rtol=1e-5, atol=1e-4,
                                       msg=lambda m, method=method, name=name: f"{method} {name}: {m}")
    # MMUnlearner's Fisher, its 6 mini-batches shared out over the 2 processes and all-reduced.
    assert sorted(two["fisher"]) == sorted(one["fisher"])
    for name, value in one["fisher"].items():
        torch.testing.assert_close(two["fisher"][name], value, rtol=1e-5, atol=1e-12)
    # MANU's neuron statistics, the same way (running sums merged across processes).
    assert sorted(two["statistics"]) == sorted(one["statistics"]) and one["statistics"]
    for site, stats in one["statistics"].items():
        assert two["statistics"][site]["count"] == stats["count"] > 0, site
        for key in ("abs_mean", "frequency", "mean", "variance", "rms"):
            torch.testing.assert_close(two["statistics"][site][key], stats[key], rtol=1e-6, atol=1e-9)
    # MLLMEraser's moments, summed over the processes.
    assert two["moments"]["count"] == one["moments"]["count"] == 25
    for table in ("sum", "outer"):
        assert sorted(two["moments"][table]) == sorted(one["moments"][table]) == [0, 3]
        for layer, value in one["moments"][table].items():
            torch.testing.assert_close(two["moments"][table][layer], value, rtol=1e-12, atol=1e-12)


def test_a_bf16_model_sharded_over_two_processes_gives_the_fp32_edit_of_one_process(world_dir, tmp_path):
    """GA on a bf16 model at lr 1e-5, 3 steps: both runs train fp32 master weights with a bf16 forward
    (one process: autocast over fp32 parameters; sharded: fp32 slices gathered as bf16 by FSDP2's
    MixedPrecisionPolicy, gradients reduced in fp32), and both edits hold the fp32 values.

    Tolerances. The forward is bf16 in both runs but not bit-identical (rows 2 × 4 instead of 8,
    weights cast by FSDP2 instead of autocast, fp32 gradient all-reduce), so gradients differ at
    bf16's resolution (~0.4%). AdamW's update is ~lr × g/|g| per entry: the same in both runs
    except where the gradient is ~0 (a key bias, invariant under softmax) and its sign is float
    noise; each such step can differ by at most two updates of opposite sign (2 lr), so 6 lr over
    3 steps bounds every entry. Measured: at most 3.1 lr on single entries, 0.3% of the entries
    more than 0.1 lr apart, the difference's norm 2.6% of the edit's; asserted < 1% and < 10%.
    Losses (bf16 forward) measured 1e-4 apart relatively; asserted rel 1e-3."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torch's launcher must be installed with torch"
    helper = HELPER.with_name("fsdp_bf16_edit.py")
    subprocess.run([sys.executable, str(helper), str(tmp_path / "one.pt"), "8", str(world_dir)],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(helper), str(tmp_path / "two.pt"), "4",
                    str(world_dir), "fsdp"], check=True, env=_env(), stdout=subprocess.DEVNULL)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["restored"] and two["restored"]  # the caller's bf16 model came back bitwise, in bf16
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)
    assert sorted(two["new"]) == sorted(one["new"]) and one["new"]
    assert all(t.dtype == torch.float32 for edit in (one, two) for t in edit["new"].values())
    names = sorted(one["new"])
    before = torch.cat([one["before"][n].float().flatten() for n in names])
    new = torch.cat([two["new"][n].flatten() for n in names])
    # The sharded edit kept the fp32 master values: most are not bf16 numbers (measured 88%, the
    # share of entries that train at all; rounded into the bf16 model they would be 0%).
    assert (new != new.bfloat16().float()).float().mean() >= 0.8
    single = torch.cat([one["new"][n].flatten() for n in names]) - before
    sharded = new - before
    lr = 1e-5
    torch.testing.assert_close(sharded, single, rtol=0, atol=6 * lr)
    assert ((sharded - single).abs() > 0.1 * lr).float().mean() < 0.01
    assert (sharded - single).norm() < 0.1 * single.norm()


def test_trained_parameters_of_mixed_dtypes_get_a_clear_error_before_sharding():
    # FSDP2 asserts one dtype among a group's trainable parameters; without mixed precision
    # (which makes them all fp32 masters) a mixed model is refused by name, before any collective.
    from mllm_unlearn.training import sharding

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).to(torch.float64))
    with pytest.raises(ValueError, match=r"different dtypes \(0.weight: torch.float32, 1.weight: torch.float64\)"):
        sharding.build_sharded_copy(model, [], lambda name, param: True, torch.device("cpu"))


def test_deepspeed_is_refused_naming_method_and_stage(benchmark, tiny_vlm, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match=r"mmunlearner: DeepSpeed ZeRO-3 is not supported.*--shard fsdp"):
        get_method("mmunlearner").unlearn(tiny_vlm(), benchmark.forget_train, benchmark.retain_train,
                                          MethodConfig(max_steps=1, progress=False))


def test_shard_options_are_checked(benchmark, tiny_vlm):
    vlm = tiny_vlm()
    with pytest.raises(ValueError, match="--shard must be one of fsdp"):
        get_method("ga").unlearn(vlm, benchmark.forget_train, [], MethodConfig(max_steps=1, shard="zero3",
                                                                               progress=False))
    with pytest.raises(ValueError, match="ga: --shard fsdp is for full fine-tuning"):
        get_method("ga").unlearn(vlm, benchmark.forget_train, [], MethodConfig(max_steps=1, shard="fsdp",
                                                                               lora=LoraOptions(), progress=False))


def test_accelerate_fsdp_flag_is_claimed_for_fsdp2(monkeypatch):
    from mllm_unlearn.training import sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(sharding, "_claimed_fsdp", False)  # put back after the test
    assert sharding.claim_accelerate_fsdp(None) == "fsdp"
    # accelerate's own plugin stays out (it would wrap the model itself and refuses CPUs).
    assert os.environ["ACCELERATE_USE_FSDP"] == "false"
    assert sharding.claim_accelerate_fsdp(None) == "fsdp"  # remembered for later calls
    assert not sharding.sharding_active("fsdp")  # one process: nothing to shard over


def test_a_deepspeed_launch_stops_the_cli_run_before_any_work(monkeypatch, tmp_path):
    from mllm_unlearn.jobs.config import RunConfig
    from mllm_unlearn.jobs.run import run_pipeline

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    with pytest.raises(ValueError, match=r"--method graddiff: DeepSpeed ZeRO-2 is not supported"):
        run_pipeline(RunConfig(name="ds", method="graddiff", runs_dir=str(tmp_path / "runs"),
                               cache_dir=str(tmp_path / "cache"), device="cpu"))
    assert not (tmp_path / "cache").exists()  # nothing was built
