"""bench/step_overhead.py times what it says: `sft train`'s trainer (sft's callbacks) against a bare SFTTrainer on
the same prepared data, model and settings, in interleaved pairs; a tiny dry run on the tiny model."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, quickstart_rows

pytestmark = pytest.mark.slow  # about 90 s: four short trainings

STEP_OVERHEAD = REPO / "bench" / "step_overhead.py"


def test_step_overhead_times_sft_against_a_bare_trainer_in_pairs(tiny_model, tmp_path):
    from tests.conftest import write_recipe

    quickstart_rows(tmp_path / "train.jsonl", 64)
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path="unused",
                          dataset_name=str(tmp_path / "train.jsonl"),
                          output_dir=str(tmp_path / "unused"), max_length=64, per_device_train_batch_size=4,
                          logging_steps=2, report_to="none", seed=0)
    work, report = tmp_path / "work", tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, str(STEP_OVERHEAD), "--recipe", str(recipe), "--model", str(tiny_model),
                           "--steps", "6", "--warmup", "2", "--pairs", "2", "--keep", str(work), "--json", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert len(result["pairs"]) == 2
    for number, pair in enumerate(result["pairs"], 1):
        assert pair["sft_seconds_per_step"] > 0 and pair["bare_seconds_per_step"] > 0
        assert pair["ratio"] == pytest.approx(pair["sft_seconds_per_step"] / pair["bare_seconds_per_step"], rel=1e-12)
        assert pair["cpu_ratio"] == pytest.approx(
            pair["sft_cpu_seconds_per_step"] / pair["bare_cpu_seconds_per_step"], rel=1e-12)
        assert (f"{number:>4} {pair['sft_seconds_per_step'] * 1e3:>12.3f} {pair['bare_seconds_per_step'] * 1e3:>13.3f} "
                f"{pair['ratio']:>7.3f}   {pair['sft_cpu_seconds_per_step'] * 1e3:>11.3f} "
                f"{pair['bare_cpu_seconds_per_step'] * 1e3:>8.3f} {pair['cpu_ratio']:>7.3f}"
                ) in proc.stdout.splitlines()
        # The sft run trained with sft's callbacks (its metrics file has every logged step), the bare one with none.
        metrics = [json.loads(line) for line in (work / f"run-{number}-sft" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in metrics if "loss" in r] == [2, 4, 6]
        assert not (work / f"run-{number}-bare" / "metrics.jsonl").exists()
    assert result["ratio"] == pytest.approx(sum(p["ratio"] for p in result["pairs"]) / 2, rel=1e-12)  # the median
    assert result["cpu_ratio"] == pytest.approx(sum(p["cpu_ratio"] for p in result["pairs"]) / 2, rel=1e-12)
    alone = result["callbacks_cpu_seconds_per_step"]
    assert 0 < alone["bare"] and 0 < alone["sft"] < 1e-3  # sft's callbacks, driven without a model: well under 1 ms
    assert proc.stdout.splitlines()[-1].startswith(
        f"callbacks alone, a step without logging: sft {alone['sft'] * 1e6:.1f} us")
    assert proc.stdout.splitlines()[-2].startswith("median: ") and f"ratio {result['ratio']:.3f}" in proc.stdout

    proc = subprocess.run([sys.executable, str(STEP_OVERHEAD), "--steps", "5", "--warmup", "4"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --warmup 4: leave at least two timed steps after it (--steps 5)"

