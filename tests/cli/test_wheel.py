"""An installed sft (a wheel, not the checkout) launches: the wheel carries the launch profiles as package data,
and `sft launch`, `accelerate launch` on the installed run.py, `sft plan` and `sft slurm` find them from a folder
that is neither the checkout nor the package.

The wheel is built from a copy of the checkout (pip wheel --no-deps --no-build-isolation) and installed with
--no-deps into a fresh venv that sees this machine's torch, transformers, ... (--system-site-packages)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CPU_OUTCOME, REPO, quickstart_rows, write_recipe

pytestmark = pytest.mark.slow

SOURCES = ["pyproject.toml", "setup.py", "README.md", "sft", "accelerate_configs", "deepspeed_configs"]


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, check=False, **kwargs)
    assert proc.returncode == 0, f"{shlex.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source])
    wheel = next((root / "dist").glob("sft-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    # --ignore-installed: the venv sees an sft already installed on this machine (the editable checkout)
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--ignore-installed", wheel])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    package = Path(run([venv / "bin" / "python", "-c", "import sft; print(sft.__file__)"], cwd=elsewhere,
                       env=env).stdout.strip()).parent
    return {"wheel": wheel, "venv": venv, "env": env, "cwd": elsewhere, "package": package}


@CPU_OUTCOME  # its run trains on 2 CPU processes over gloo
def test_the_wheel_holds_every_module_template_and_profile(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    in_checkout = {p.relative_to(REPO).as_posix() for p in (REPO / "sft").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".jinja")}
    assert in_checkout and in_checkout <= names, sorted(in_checkout - names)
    for folder, suffix in (("accelerate_configs", ".yaml"), ("deepspeed_configs", ".json")):
        files = sorted((REPO / folder).glob(f"*{suffix}"))
        assert files and {f"sft/{folder}/{f.name}" for f in files} <= names
        with zipfile.ZipFile(installed["wheel"]) as wheel:  # the same bytes: one source
            assert all(wheel.read(f"sft/{folder}/{f.name}") == f.read_bytes() for f in files)
    assert installed["package"].parent.parent.parent.parent == installed["venv"]  # venv/lib/pythonX.Y/site-packages


def tiny_recipe(folder: Path, tiny_model: Path) -> Path:
    quickstart_rows(folder / "train.jsonl", 8)
    return write_recipe(folder / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                        output_dir=str(folder / "out"), max_length=64, per_device_train_batch_size=2,
                        learning_rate=1e-3, max_steps=2, logging_steps=1, save_strategy="no", seed=0, report_to="none")


def check_trained_by_two_processes(run_dir: Path, logs: str):
    assert "2 processes over gloo" in logs
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in steps if "loss" in s] == [0.5, 1.0]  # 8 rows, 2 processes x 2 rows a step
    assert (run_dir / "model.safetensors").is_file()


def test_installed_sft_launches_from_another_folder(installed, tiny_model):
    venv, env, cwd, package = installed["venv"], installed["env"], installed["cwd"], installed["package"]
    recipe = tiny_recipe(cwd, tiny_model)
    sft = venv / "bin" / "sft"

    # sft launch: the profile and its DeepSpeed file, from the installed package.
    proc = run([sft, "launch", recipe, "--profile", "zero3", "--num-processes", "2"], cwd=cwd, env=env)
    said = proc.stderr
    assert f"--config_file {package / 'accelerate_configs' / 'zero3.yaml'} " in said
    assert f"--deepspeed_config_file {package / 'deepspeed_configs' / 'zero3.json'} " in said
    assert f" {package / 'run.py'} {recipe}" in said
    check_trained_by_two_processes(cwd / "out", said)

    # accelerate launch on the installed run.py, as `sft launch --dry-run` prints it.
    proc = run([sft, "launch", recipe, "--profile", "multi_gpu", "--num-processes", "2", "--dry-run"], cwd=cwd,
               env=env)
    line = next(li for li in proc.stderr.splitlines() if li.startswith("sft: accelerate launch "))
    words = shlex.split(line.removeprefix("sft: accelerate launch "))
    assert words[1] == str(package / "accelerate_configs" / "multi_gpu.yaml")
    proc = run([venv / "bin" / "python", "-m", "accelerate.commands.accelerate_cli", "launch", *words,
                "--output_dir", cwd / "out-accelerate"], cwd=cwd, env=env)
    check_trained_by_two_processes(cwd / "out-accelerate", proc.stdout + proc.stderr)

    # sft plan and sft slurm name the installed files too.
    plan = json.loads(run([sft, "plan", recipe, "--gpus", "2", "--gpu-memory", "24", "--json"], cwd=cwd,
                          env=env).stdout)
    assert str(package / "accelerate_configs" / f"{plan['recommended']}.yaml") in plan["command"]
    script = run([sft, "slurm", recipe, "--nodes", "2", "--cpu", "--profile", "zero2"], cwd=cwd, env=env).stdout
    assert f"--config_file {package / 'accelerate_configs' / 'zero2.yaml'} " in script
    assert f"--deepspeed_config_file {package / 'deepspeed_configs' / 'zero2.json'} " in script
