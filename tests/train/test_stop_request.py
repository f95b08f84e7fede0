"""A stop request (SIGUSR1, SIGTERM, Ctrl-C, the stop file) that reaches one rank of a multi-process run: every
rank checkpoints at the same step and the run exits as a stopped one. The ranks agree on it with an all-reduce
about once a second, not at every step; a rank that stopped alone would leave the other waiting forever."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, quickstart_rows, write_recipe


def test_steps_between_agreements_keep_about_a_second_of_training():
    from sft.train.preemption import steps_between_agreements

    assert steps_between_agreements(2.0) == 1  # slow steps: agree after each one
    assert steps_between_agreements(1.0) == 1
    assert steps_between_agreements(0.01) == 100
    assert steps_between_agreements(1e-6) == 1000  # capped
    assert steps_between_agreements(0.0) == 1  # no measurement yet


def rank_process(launcher: subprocess.Popen, rank: int, timeout=120):
    """The training process of one rank, a descendant of the `accelerate launch` process."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"no rank-{rank} process under the launcher")


def logged_steps(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]


@pytest.mark.slow  # about 30 s: two processes start, train a few steps, stop and save
def test_a_signal_to_one_rank_checkpoints_every_rank_at_the_same_step(tiny_model, tmp_path):
    quickstart_rows(tmp_path / "train.jsonl", 64)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(out), max_length=64,
                          per_device_train_batch_size=2, learning_rate=1e-3, max_steps=100000, save_steps=50000,
                          logging_steps=1, seed=0, report_to="none")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_gpu.yaml",
         "--num_processes", "2", "sft/run.py", str(recipe)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while len(logged_steps(out)) < 5:  # past the first agreements, which measure the step time
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.time() < deadline, "the run did not start training"
            time.sleep(0.2)
        rank_process(launcher, rank=1).send_signal(signal.SIGUSR1)  # rank 1 only; rank 0 never sees it
        signalled_after = logged_steps(out)[-1]
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:  # a hung run: end its ranks too, not only the launcher
            import psutil

            for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
    assert launcher.returncode == 0, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "stopped on request at step" in line]
    assert len(said) == 1, stderr[-3000:]  # the main process says it
    step = int(said[0].split("at step ")[1].split(":")[0])
    assert said[0].endswith(f"checkpoint-{step} saved in {out}; the same command resumes from it")
    assert step >= signalled_after
    # One checkpoint, at that step, whole (the marker goes in after every rank saved), with each rank's RNG state.
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    checkpoint = out / f"checkpoint-{step}"
    record = json.loads((checkpoint / "sft-complete.json").read_text())
    assert record["global_step"] == step  # and every rank's file, with its size as saved
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(record["files"])
    assert all(size == (checkpoint / name).stat().st_size for name, (size, _) in record["files"].items())
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert logged_steps(out)[-1] == step and not (out / "model.safetensors").exists()  # stopped, not finished
