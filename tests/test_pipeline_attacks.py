"""The attack battery in a run (robustness stages, certificate.json, reports) and `mllm-unlearn attack RUN_DIR`."""
from __future__ import annotations

import json
from dataclasses import replace

from typer.testing import CliRunner

from mllm_unlearn.cli import app
from mllm_unlearn.eval.attacks import ATTACK_ORDER, AttackConfig
from mllm_unlearn.jobs.attack import attack_existing_run
from mllm_unlearn.jobs.run import run_pipeline
from mllm_unlearn.report import compare_markdown, load_results

from .test_pipeline import small_run


def test_a_run_attacks_its_edit_writes_the_certificate_and_attack_reruns_it(tmp_path):
    battery = AttackConfig(control_people=2, benign_steps=2, benign_batch_size=4, batch_size=16)
    cfg = replace(small_run(tmp_path, "cache", "att"), attacks=battery)
    results = run_pipeline(cfg)
    run_dir = tmp_path / "runs" / "att"
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results, default=str))
    stages = saved["robustness"]["attacks"]
    assert set(stages) == {"plain", *ATTACK_ORDER, "certificate"}
    assert all("records" in stages[name] for name in ATTACK_ORDER), {k: list(v) for k, v in stages.items()}
    certificate = json.loads((run_dir / "certificate.json").read_text())
    assert certificate == stages["certificate"] and saved["failures"] == []
    assert set(certificate["summary"]) == {"vqa", "qa"} and certificate["summary"]["vqa"]["people"] == 2
    assert {f"attack: {name}" for name in ("plain", *ATTACK_ORDER)} <= set(saved["cost"]["wall_time_s"])
    assert saved["config"]["attacks"]["control_people"] == 2 and saved["config"]["attacks"]["seed"] == cfg.seed
    report = (run_dir / "report.md").read_text()
    for heading in ("## Attack battery: does forgotten knowledge come back?", "## Forgetting certificate",
                    "| quantization, 4-bit RTN |", "Attack battery: "):
        assert heading in report, heading
    page = (run_dir / "report.html").read_text()
    assert "Attack battery and forgetting certificate" in page and 'id="plot-logit-lens"' in page
    table = compare_markdown([load_results(run_dir)])
    assert "forget acc. 4-bit quantized (VQA · QA)" in table and "certified forgotten (VQA · QA)" in table

    # One attack again on the same edit and settings: the others' outcomes are kept and certified with it.
    merged = attack_existing_run(run_dir, replace(battery, attacks=("logit_lens",)), device="cpu")
    assert set(merged["robustness"]["attacks"]) == set(stages)
    assert merged["robustness"]["attacks"]["prompt"] == stages["prompt"]
    assert merged["robustness"]["attacks"]["certificate"]["attacks"] == list(ATTACK_ORDER)
    assert merged["robustness"]["attacks"]["certificate"] == json.loads((run_dir / "certificate.json").read_text())

    # The battery again on the finished run: two attacks only, the run's edit given explicitly (a fresh battery).
    (run_dir / "certificate.json").unlink()
    result = CliRunner().invoke(app, ["attack", str(run_dir), "--attacks", "logit_lens,quantization", "--edit",
                                      str(run_dir / "edit"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    again = json.loads((run_dir / "results.json").read_text())
    assert set(again["robustness"]["attacks"]) == {"plain", "quantization", "logit_lens", "certificate"}
    def forget(records):
        return [r for r in records if r["group"] == "forget"]

    # Seeded: the same answers on the forget people (the CLI's control sample is its default 10 people).
    assert forget(again["robustness"]["attacks"]["quantization"]["records"]) == forget(stages["quantization"]["records"])
    assert "attack: benign_relearn" not in again["cost"]["wall_time_s"]
    assert again["config"]["attacks_edit"] == str(run_dir / "edit") and (run_dir / "certificate.json").is_file()
    assert again["vanilla"] == saved["vanilla"] and again["unlearned"] == saved["unlearned"]
    assert "## Forgetting certificate" in result.output

    missing = CliRunner().invoke(app, ["attack", str(tmp_path / "nothing"), "--quiet"])
    assert missing.exit_code == 2 and "results.json" in missing.output
    unknown = CliRunner().invoke(app, ["attack", str(run_dir), "--attacks", "quantisation", "--quiet"])
    assert unknown.exit_code == 2 and "unknown attack" in unknown.output
