"""Shared fixtures: tiny models built locally (never downloaded), and a helper that runs the real CLI."""

import os
import subprocess
import uuid
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and 2-process runs on 2 cores thrash with them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama with a character tokenizer and a ChatML template, saved as an ordinary model folder."""
    from sft.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-char")


@pytest.fixture(scope="session")
def tiny_bpe_model(tmp_path_factory) -> Path:
    """The same with a byte-level BPE tokenizer whose merges cross template boundaries."""
    from sft.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bpe", kind="bpe")


def run_cli(*args, cwd=None, env=None, timeout=600, check=False):
    """Run `sft ARGS` (or `python sft/run.py ARGS` when args[0] == "run.py") in a subprocess, as a user would."""
    if args and args[0] == "run.py":
        cmd = [sys.executable, str(REPO / "sft" / "run.py"), *map(str, args[1:])]
    else:
        cmd = [sys.executable, "-m", "sft.cli", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_cli_in_process(*args, cwd=None, env=None):
    """`sft ARGS` run in this process, with stdout/stderr captured and the same returncode/stdout/stderr as
    run_cli's result. For inputs that fail before any training: a subprocess costs ~10 s of imports each time,
    this costs them once per test worker. A few tests keep run_cli for the real exit-code/stderr contract."""
    from click.testing import CliRunner

    from sft.cli import main

    old_cwd = os.getcwd()
    runner = CliRunner()
    # isolation() restores these afterwards; SFT_DEBUG and PYTORCH_CUDA_ALLOC_CONF are listed so that a `--debug` or
    # sft's allocator default (which set them) cannot leak.
    kept = {"SFT_DEBUG": None, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    with runner.isolation(env={**kept, **(env or {})}) as (out, err, _):
        os.chdir(cwd or old_cwd)
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            os.chdir(old_cwd)
            sys.stdout.flush()  # isolation's text wrappers buffer
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["sft", *map(str, args)], code, stdout, stderr)


# For tests whose expected outcome is the CPU one (gloo, "N CPU processes", float32, FSDP refused). The condition is a
# string so torch is imported only when such a test runs, not when this file is.
CPU_OUTCOME = pytest.mark.skipif("__import__('torch').cuda.is_available()",
                                 reason="asserts what happens on a CPU-only machine; bench/gpu/check.py covers GPUs")


def quickstart_rows(path: Path, rows: int) -> Path:
    """The first `rows` lines of the quickstart's training data, written to `path`."""
    lines = (REPO / "recipes" / "data" / "uppercase_train.jsonl").read_text().splitlines()[:rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_recipe(path: Path, **values) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.fixture
def existing_output(tmp_path):
    """An output_dir with a user's file in it: no bad input may touch it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    return out


SAMPLE_PROMPTS = ["Uppercase: abc", "Uppercase: hello world"]


@pytest.fixture(scope="session")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    """A real `sft train` LoRA run of 6 steps on the tiny model (adapter, checkpoints, metrics.jsonl, samples),
    shared by the tests of what comes after training (eval, merge, generate, chat, report)."""
    root = tmp_path_factory.mktemp("lora-run")
    quickstart_rows(root / "train.jsonl", 48)
    recipe = write_recipe(
        root / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(root / "train.jsonl"),
        output_dir=str(root / "run"), method="lora", lora_r=8, max_length=64, max_steps=6,
        per_device_train_batch_size=8, learning_rate=2.0e-2, logging_steps=2, save_steps=3, seed=0,
        report_to="tensorboard", sample_prompts=SAMPLE_PROMPTS, sample_every_n_steps=3, sample_max_new_tokens=8,
    )
    run_cli("train", recipe, check=True)
    return root / "run"


HUB_TOKEN = "hf_sftTest" + uuid.uuid4().hex  # the client sends it; no file or log may contain it


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hub-compatible server on loopback (tests/support/hub_server.py) and the environment that points the real
    huggingface_hub client at it. huggingface_hub reads these at import: they reach the CLI subprocesses."""
    from tests.support.hub_server import HubServer

    with HubServer() as server:
        server.env = {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": HUB_TOKEN,
                      "HF_HOME": str(tmp_path_factory.mktemp("hf-home")), "HF_HUB_DISABLE_TELEMETRY": "1"}
        yield server


# Under pytest-xdist (pyproject's addopts: `-n auto --dist loadgroup`) each worker builds its own session and module
# fixtures. Tests sharing a costly trained fixture go to one worker so it trains once, and tests that start several
# processes (accelerate's default port 29500, the one-node Slurm cluster) go to one worker so they never collide.
SHARED_RUNS = ("lora_run", "finished", "tracked_run", "quickstart_model", "published", "base")
PROCESS_MODULES = {"test_distributed.py", "test_multinode.py", "test_fsdp2.py", "test_slurm.py", "test_profiles.py",
                   "test_data_once_per_node.py", "test_stop_request.py", "test_bench.py", "test_step_overhead.py",
                   "test_launch_processes.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PROCESS_MODULES:
            item.add_marker(pytest.mark.xdist_group("processes"))
            continue
        shared = next((name for name in SHARED_RUNS if name in item.fixturenames), None)
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))
