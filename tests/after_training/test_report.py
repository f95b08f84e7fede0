"""`sft report`: plots and a summary from a run's metrics.jsonl or trainer_state.json; two runs overlaid."""

import json

from tests.conftest import run_cli


def test_report_of_one_run(lora_run, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("report", lora_run, "-o", out, check=True)
    assert "4 plots and summary.md" in proc.stderr + proc.stdout
    for name in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = (out / "summary.md").read_text()
    records = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    final_loss = [r["loss"] for r in records if "loss" in r][-1]
    assert f"| final train loss | {final_loss:.4g} |" in summary
    assert "| steps | 6 |" in summary and "![loss](loss.png)" in summary


def test_two_runs_overlaid_and_trainer_state_fallback(lora_run, tmp_path):
    import shutil

    # A run without metrics.jsonl (e.g. trained by another tool): its newest checkpoint's log history is read.
    other = tmp_path / "other-run"
    shutil.copytree(lora_run / "checkpoint-6", other / "checkpoint-6")
    state = json.loads((other / "checkpoint-6" / "trainer_state.json").read_text())
    for record in state["log_history"]:
        if "loss" in record:
            record["loss"] += 1.0
    (other / "checkpoint-6" / "trainer_state.json").write_text(json.dumps(state))
    out = tmp_path / "compare"
    run_cli("report", lora_run, other, "-o", out, check=True)
    summary = (out / "summary.md").read_text()
    assert f"| | {lora_run.name} | other-run |" in summary
    assert "other-run: read from" in summary and "checkpoint-6/trainer_state.json" in summary
    losses = next(line for line in summary.splitlines() if line.startswith("| final train loss"))
    a, b = (float(x) for x in losses.strip("|").split("|")[1:])
    assert abs((b - a) - 1.0) < 1e-3
    assert (out / "loss.png").stat().st_size > 5000


def test_run_without_trainer_state(tmp_path):
    (tmp_path / "empty-run").mkdir()
    proc = run_cli("report", tmp_path / "empty-run")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {tmp_path / 'empty-run'}: no trainer state (metrics.jsonl or "
                                   "trainer_state.json with a log history); give the output_dir of a run that has "
                                   "logged at least one step")
