"""bench/profiles.py measures what it says: its whole path (build the model, launch each profile through
`accelerate launch ... sft/run.py`, read tokens/s from the run's log, MFU, peak memory, the planner's estimate) runs
here on 2 CPU processes over gloo with --cpu; on a GPU machine only the memory counters and the peak differ."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CPU_OUTCOME, REPO

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
    from sft.recipe.load import load_recipe

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


@CPU_OUTCOME
def test_without_a_gpu_or_cpu_flag_it_prints_the_plan_only(tiny_model, tmp_path):
    proc = bench("--model-config", tiny_model / "config.json", "--seq", SEQ, "--batch", BATCH, "--gpus", 2,
                 "--keep", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU: cannot measure tokens/s, MFU or peak GPU memory (--cpu measures on CPU processes)" in proc.stdout
    assert "  zero3          estimate" in proc.stdout
    assert not list((tmp_path / "work").glob("run-*"))  # nothing trained


@pytest.mark.slow  # about 15 s: the bench builds the model and plans before it skips
@CPU_OUTCOME
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


# ---------------------------------------------------------------------------------------------------------------
# bench/gpu/check.py: the GPU check, dry-run on CPU (a Llama-3.2-1B shape scaled down, 4 steps per configuration)

GPU_CHECK = REPO / "bench" / "gpu" / "check.py"
DRY_SEQ, DRY_RANK = 64, 16


def gpu_check(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(GPU_CHECK), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def causal_keys(lengths):
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


def test_gpu_check_dry_run_trains_every_configuration_with_method_aware_mfu_and_the_plan(tmp_path):
    from safetensors.torch import load_file

    from sft.launch.plan import make_plan
    from sft.recipe.load import load_recipe

    report, work = tmp_path / "check.json", tmp_path / "work"
    proc = gpu_check("--dry-run", "--peak-tflops", PEAK_TFLOPS, "--json", report, "--work", work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    methods = ["full", "lora"] + (["qlora"] if importlib.util.find_spec("bitsandbytes") else [])
    names = [f"{m}-sdpa-{p}" for m in methods for p in ("bfd", "wrapped")]
    assert [r["name"] for r in result["results"]] == names[:2] + ["full-sdpa-padded"] + names[2:]
    assert "left out: flash_attention_2: no GPU" in proc.stdout and "left out: liger: no GPU" in proc.stdout

    # P: every matmul weight of the model the check built (linears, and the tied embedding once, as the LM head)
    weights = load_file(str(work / "model" / "model.safetensors"))
    matmul = sum(t.numel() for t in weights.values() if t.ndim == 2)
    adapter = sum(DRY_RANK * sum(t.shape) for name, t in weights.items() if t.ndim == 2 and "embed" not in name)
    shape = result["model"]
    layers, width = shape["num_hidden_layers"], shape["num_attention_heads"] * shape["head_dim"]
    # Attention keys per token: bfd packs whole documents (each attends to itself: its characters and EOS), as
    # padded batches do; wrapped cuts the token stream into rows of max_length that attend across documents.
    documents = [len(json.loads(line)["text"]) + 1 for line in (work / "data.jsonl").read_text().splitlines()]
    stream = sum(documents)
    keys = {"bfd": causal_keys(documents), "padded": causal_keys(documents),
            "wrapped": causal_keys([DRY_SEQ] * (stream // DRY_SEQ) + [stream % DRY_SEQ] * bool(stream % DRY_SEQ))}
    for r in result["results"]:
        assert (r["status"], r["refused"], r["steps"], r["timed_steps"]) == ("ok", None, 4, 3), r
        assert r["tokens_per_second"] > 0
        assert r["keys_per_token"] == pytest.approx(keys[r["packing_strategy"]], rel=1e-12)
        assert (r["matmul_parameters"], r["lora_parameters"]) == (matmul, 0 if r["method"] == "full" else adapter)
        # Full: 6P. LoRA/QLoRA: the frozen base needs no weight gradient (4P), the adapters 6 each.
        trained = 6 * matmul if r["method"] == "full" else 4 * matmul + 6 * adapter
        assert r["flops_per_token"] == pytest.approx(trained + 12 * layers * width * r["keys_per_token"], rel=1e-12)
        assert r["mfu"] == pytest.approx(r["tokens_per_second"] * r["flops_per_token"] / (PEAK_TFLOPS * 1e12))
        plan = make_plan(load_recipe(str(work / r["name"] / "recipe.yaml")), 1, 80.0, half=False)
        assert r["estimate_bytes"] == next(p["per_gpu_bytes"] for p in plan["profiles"] if p["name"] == "single_gpu")
        line = next(li for li in proc.stdout.splitlines() if li.startswith(r["name"] + " "))
        assert f"{r['mfu'] * 100:.1f}%" in line and f"{r['estimate_bytes'] / 1e9:.2f}" in line
    assert "dependencies: all satisfied, nothing installed" in proc.stdout


def test_gpu_check_runs_a_configuration_in_its_own_process_and_skips_what_the_time_budget_leaves_out(tmp_path):
    report = tmp_path / "check.json"
    proc = gpu_check("--dry-run", "--isolate", "--configs", "full-sdpa-wrapped", "--json", report,
                     "--log", tmp_path / "workers.log", "--work", tmp_path / "work")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [first] = json.loads(report.read_text())["results"]
    assert (first["name"], first["status"], first["timed_steps"]) == ("full-sdpa-wrapped", "ok", 3)
    assert "CUDA allocator: expandable_segments:True" in proc.stdout  # the allocator `sft train` sets up
    assert first["mfu"] is None and "peak unknown (--peak-tflops)" in proc.stdout  # a CPU has no peak in the table
    assert first["peak_allocated_bytes"] > 4 * first["parameters"]  # the worker process's peak resident set
    assert "===== full-sdpa-wrapped (exit code 0)" in (tmp_path / "workers.log").read_text()

    proc = gpu_check("--dry-run", "--minutes", 0, "--configs", "full-sdpa-bfd", "--json", report,
                     "--work", tmp_path / "work")  # the model folder is reused
    assert proc.returncode == 0, proc.stderr[-3000:]
    [skipped] = json.loads(report.read_text())["results"]
    assert (skipped["status"], skipped["reason"]) == ("skipped", "time budget (--minutes 0) spent")
    assert "full-sdpa-bfd            skipped: time budget (--minutes 0) spent" in proc.stdout

    proc = gpu_check("--dry-run", "--configs", "full-flash2-bfd", "--work", tmp_path / "work")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: --configs: full-flash2-bfd cannot run here; choose from "
                                          "full-sdpa-bfd, full-sdpa-wrapped")


def test_gpu_check_names_the_unmet_requirements_and_installs_nothing_on_a_dry_run(tmp_path):
    check = gpu_check_module()
    import pytest as installed_pytest

    assert check.unmet(["pytest>=1", "pytest<1", "no-such-package-sft-test"]) == [
        f"pytest<1 (installed: {installed_pytest.__version__})", "no-such-package-sft-test"]
    wanted = ["click>=8", "no-such-package-sft-test>=1"]
    assert check.install_missing(tmp_path, wanted, dry_run=True) == [
        "dependencies not satisfied: no-such-package-sft-test>=1", "not installing (--dry-run)"]
    assert check.install_missing(tmp_path / "absent", wanted, dry_run=False)[1] == (
        f"not installing (no wheel folder {tmp_path / 'absent'} (run bench/gpu/fetch_wheels.py where pip works))")


def test_fetch_wheels_keeps_only_the_bitsandbytes_libraries_for_the_gpu_machines_cuda(tmp_path):
    import zipfile

    spec = importlib.util.spec_from_file_location("fetch_wheels", REPO / "bench" / "gpu" / "fetch_wheels.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libraries = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026"]
    files = {"bitsandbytes/__init__.py": b"x = 1\n", **{f"bitsandbytes/libbitsandbytes_{lib}.so": lib.encode() * 100
                                                      for lib in libraries}}
    record = "bitsandbytes-0.50.2.dist-info/RECORD"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        listing = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in files.items())
        z.writestr(record, listing + f"{record},,\n")

    fetch.slim_bitsandbytes(wheel, "13")
    kept = ["bitsandbytes/__init__.py"] + [f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in ("cpu", "cuda130",
                                                                                              "cuda132")]
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted(kept + [record])
        assert [line.split(",")[0] for line in z.read(record).decode().splitlines()] == sorted(kept) + [record]
        assert z.read("bitsandbytes/libbitsandbytes_cuda130.so") == b"cuda130" * 100
    fetch.slim_bitsandbytes(wheel, "13")  # already slim: left as it is
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted(kept + [record])


def test_preprocess_bench_compares_sft_and_trl_from_a_jsonl_file():
    """bench/preprocess.py at tiny sizes: both sides run in their own subprocess and get identical tokens."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "preprocess.py"), "--sizes", "40,80", "--num-proc",
                           "2", "--pairs", "1"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["conversations", "pair", "sft", "ex/s"])
    pairs = [line.split() for line in lines[header + 1:] if len(line.split()) > 2 and line.split()[1] == "1"]
    assert [row[0] for row in pairs] == ["40", "80"] and all(row[-1] == "True" for row in pairs)  # identical tokens
    medians = [line.split() for line in lines[header + 1:] if "median speed" in line]
    assert [row[0] for row in medians] == ["40", "80"]
    assert lines[-1].startswith("sft peak anonymous memory at 80 / at 40 (medians): ")


def test_preprocess_bench_runs_sft_alone_for_its_memory_growth():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "preprocess.py"), "--sizes", "40,80", "--num-proc",
                           "2", "--pairs", "1", "--sft-only"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["conversations", "run", "sft"])
    assert [line.split()[:2] for line in lines[header + 1:-1]] == [["40", "1"], ["80", "1"]]
    assert lines[-1].startswith("sft peak anonymous memory at 80 / at 40 (medians): ")
