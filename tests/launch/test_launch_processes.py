"""`sft launch` with several processes behaves as one process does: a missing DeepSpeed is one line before
anything starts."""

import os
import subprocess
import sys

from tests.conftest import run_cli
from tests.launch.test_profiles import recipe_file


def without_deepspeed(tmp_path) -> dict:
    """An environment in which `import deepspeed` fails, as after the quickstart install (sitecustomize runs in
    every Python process started with it)."""
    shim = tmp_path / "no-deepspeed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\nsys.modules["deepspeed"] = None\n')
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)}


def test_a_deepspeed_profile_without_deepspeed_is_one_line_naming_the_install(tmp_path, tiny_model):
    recipe = recipe_file(tmp_path, tiny_model, max_steps=1)
    env = without_deepspeed(tmp_path)
    for extra in (["--dry-run"], []):
        proc = run_cli("launch", recipe, "--profile", "zero3", "--num-processes", "2", *extra, env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines() == [
            'error: profile zero3 needs DeepSpeed, which is not installed; install it after torch with: '
            'pip install -c constraints.txt --no-build-isolation -e ".[deepspeed]"']
        assert not (tmp_path / "out").exists()


def test_a_cpu_run_picks_threads_that_cannot_oversubscribe_and_says_so_first(tmp_path, tiny_model):
    import psutil

    recipe = recipe_file(tmp_path, tiny_model, max_steps=1, save_strategy="no")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's default: one per logical CPU
    proc = subprocess.run([sys.executable, "-m", "sft.cli", "train", str(recipe)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = min(psutil.cpu_count(logical=False), len(os.sched_getaffinity(0)))
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sft: ")]
    assert f"sft: CPU threads: {cores} per process ({cores} physical cores available; set OMP_NUM_THREADS to " \
           "choose)" in lines[:3], lines

    proc = subprocess.run([sys.executable, "-m", "sft.cli", "check", str(recipe)], env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert "CPU threads: 1 per process (OMP_NUM_THREADS=1; set OMP_NUM_THREADS to choose)" in proc.stdout, proc.stdout
