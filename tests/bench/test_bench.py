"""bench/profiles.py measures what it says: its whole path (build the model, launch each profile through
`accelerate launch ... sft/run.py`, read tokens/s from the run's log, MFU, peak memory, the planner's estimate) runs
here on 2 CPU processes over gloo with --cpu; on a GPU machine only the memory counters and the peak differ."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

BENCH = REPO / "bench" / "profiles.py"
STEPS, WARMUP, SEQ, BATCH, PROCESSES, PEAK_TFLOPS = 6, 2, 32, 2, 2, 0.5


def bench(*args, timeout=600):
    proc = subprocess.run([sys.executable, str(BENCH), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc


# The QLoRA case builds the bench's own default model for --cpu (sft's tiny Llama) instead of a given config.
@pytest.mark.parametrize("method, profiles, given_config", [("full", ["multi_gpu", "zero3"], True),
                                                            ("qlora", ["zero3_qlora"], False)])
def test_cpu_bench_reports_the_runs_tokens_mfu_memory_and_the_plan(method, profiles, given_config, tiny_model,
                                                                   tmp_path):
    from safetensors.torch import load_file

    from sft.launch.plan import make_plan
    from sft.recipe import load_recipe

    work, report = tmp_path / "work", tmp_path / "bench.json"
    config = ["--model-config", tiny_model / "config.json"] if given_config else []
    proc = bench("--cpu", *config, "--method", method, "--steps", STEPS,
                 "--warmup", WARMUP, "--seq", SEQ, "--batch", BATCH, "--gpus", PROCESSES, "--profiles",
                 ",".join(profiles), "--peak-tflops", PEAK_TFLOPS, "--json", report, "--keep", work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert [r["name"] for r in result["profiles"]] == profiles
    assert all(r["status"] == "ok" for r in result["profiles"]), result

    # N: every parameter of the model the bench built (the planner counts it on the meta device from the config)
    weights = load_file(str(work / "model" / "model.safetensors"))
    assert result["parameters"] == sum(t.numel() for t in weights.values())
    plan = make_plan(load_recipe(str(work / "recipe.yaml")), PROCESSES, 80.0, half=False)
    planned = {p["name"]: p["per_gpu_bytes"] for p in plan["profiles"]}

    for r in result["profiles"]:
        rows = [json.loads(line) for line in (work / f"run-{r['name']}" / "metrics.jsonl").read_text().splitlines()]
        steps = [row for row in rows if "loss" in row]
        assert [row["step"] for row in steps] == list(range(1, STEPS + 1))  # it trained every step
        seen = [row["num_input_tokens_seen"] for row in steps]
        # Full micro-batches of SEQ real tokens on every process: tokens/s counts no padding.
        assert [b - a for a, b in zip([0] + seen, seen)] == [PROCESSES * BATCH * SEQ] * STEPS
        elapsed = steps[-1]["time"] - steps[WARMUP]["time"]
        assert r["tokens_per_second_per_device"] == pytest.approx(
            (STEPS - 1 - WARMUP) * BATCH * SEQ / elapsed, rel=1e-9)
        assert r["mfu"] == pytest.approx(6 * result["parameters"] * r["tokens_per_second_per_device"]
                                         / (PEAK_TFLOPS * 1e12), rel=1e-9)
        # Peak resident memory of the busiest process: more than the weights, less than this machine could hold.
        assert 4 * result["parameters"] < r["peak_allocated_bytes"] < 8e9 and r["peak_reserved_bytes"] is None
        assert r["estimate_bytes"] == planned[r["name"]]
        saved = work / f"run-{r['name']}" / ("adapter_model.safetensors" if method == "qlora" else "model.safetensors")
        assert saved.stat().st_size > 0
        row = next(line for line in proc.stdout.splitlines() if line.startswith(r["name"] + " "))
        assert f"{r['mfu'] * 100:.1f}%" in row and row.rstrip().endswith(f"ok ({r['seconds']:.0f} s)")


def test_without_a_gpu_or_cpu_flag_it_prints_the_plan_only(tiny_model, tmp_path):
    proc = bench("--model-config", tiny_model / "config.json", "--seq", SEQ, "--batch", BATCH, "--gpus", 2,
                 "--keep", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU: cannot measure tokens/s, MFU or peak GPU memory (--cpu measures on CPU processes)" in proc.stdout
    assert "  zero3          estimate" in proc.stdout
    assert not list((tmp_path / "work").glob("run-*"))  # nothing trained


@pytest.mark.slow  # about 15 s: the bench builds the model and plans before it skips
def test_cpu_bench_skips_fsdp_with_the_reason(tiny_model, tmp_path):
    report = tmp_path / "bench.json"
    proc = bench("--cpu", "--model-config", tiny_model / "config.json", "--steps", 3, "--warmup", 0, "--seq", SEQ,
                 "--batch", BATCH, "--gpus", 2, "--profiles", "fsdp2", "--json", report, "--keep", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = json.loads(report.read_text())["profiles"]
    assert (result["name"], result["status"]) == ("fsdp2", "skipped")
    assert result["reason"] == "FSDP runs on GPUs only (accelerate ignores its plugin on CPU)"
    assert not list((tmp_path / "work").glob("run-*"))  # nothing launched
    assert "skipped: FSDP runs on GPUs only" in next(li for li in proc.stdout.splitlines() if li.startswith("fsdp2 "))


def test_bad_arguments_get_one_line(tiny_model, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep-me").write_text("user data")
    proc = bench("--cpu", "--model-config", tiny_model / "config.json", "--keep", tmp_path / "full")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --keep {tmp_path / 'full'}: folder is not empty; name a new or empty one"
    assert (tmp_path / "full" / "keep-me").read_text() == "user data"
    proc = bench("--cpu", "--steps", 5, "--warmup", 4)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --warmup 4: leave at least two logged steps after it (--steps 5)"
    proc = bench("--profiles", "zero2,zero4")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --profiles: unknown zero4; choose from single_gpu")
