"""A --lora run end to end: its edit is LoRA factors, attacked and reported, exported as a checkpoint or a peft adapter."""
import json
from dataclasses import replace

import torch
from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.interventions import LowRankDelta, load_edit
from mllm_unlearn.training import LoraOptions

from .test_pipeline import small_run


def test_a_lora_run_saves_factors_and_exports_a_checkpoint_and_a_peft_adapter_alike(tmp_path_factory):
    from peft import PeftModel

    from mllm_unlearn.data.collate import Encoder
    from mllm_unlearn.models import load_vlm

    base = tmp_path_factory.getbasetemp()  # the vanilla cache other pipeline tests share
    cfg = small_run(base, "cache_methods", "lora-run")
    cfg = replace(cfg, method_cfg=replace(cfg.method_cfg, lora=LoraOptions(r=2, alpha=4), lr=1e-2),
                  eval=replace(cfg.eval, tasks=("mcq",)), mia=None)
    from mllm_unlearn.jobs.run import run_pipeline

    results = run_pipeline(cfg)
    run_dir = base / "runs" / "lora-run"
    assert results["edit"]["kind"] == "low_rank_delta" and results["config"]["dtype"] == "float32"
    attack = results["robustness"]["relearn"]  # the attack ran on a copy with the factors baked in
    assert attack["edit_mode"] == "baked" and len(attack["train_losses"]) == 2
    edit = load_edit(run_dir / "edit")
    assert isinstance(edit, LowRankDelta) and results["cost"]["changed_parameters"] == edit.changed_parameters

    runner = CliRunner()
    out = base / "lora-exports"
    for args in (["--out", str(out / "checkpoint")], ["--out", str(out / "adapter"), "--peft-adapter"]):
        done = runner.invoke(app, ["export", str(run_dir), *args])
        assert done.exit_code == 0, done.output
    provenance = json.loads((out / "adapter" / "unlearning.json").read_text())
    assert provenance["edit_kind"] == "low_rank_delta" and provenance["base_model"] == results["config"]["model_path"]

    vanilla = load_vlm(results["config"]["model_path"], device="cpu")
    batch = Encoder(vanilla).batch(list(vanilla_items(cfg))[:4], train=False)
    with torch.no_grad():
        with edit.applied(vanilla):
            applied = vanilla.model(**batch).logits
        baked = load_vlm(out / "checkpoint", device="cpu").model(**batch).logits
        adapted = PeftModel.from_pretrained(vanilla.model, str(out / "adapter"))(**batch).logits
    assert torch.allclose(baked, applied, rtol=1e-4, atol=1e-5)
    assert torch.allclose(adapted, applied, rtol=1e-5, atol=1e-6)


def vanilla_items(cfg):
    from mllm_unlearn.jobs.prepare import prepare_benchmark

    benchmark, _ = prepare_benchmark(cfg)
    return benchmark.eval_splits["forget"]
