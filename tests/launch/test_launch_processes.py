"""`sft launch` with several processes behaves as one process does: a missing DeepSpeed is one line before
anything starts."""

import os

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
