"""What sft sets up for the machine before training: PyTorch's CUDA allocator with expandable segments by default
(sft.train.hardware.default_cuda_allocator), in every entry point, before torch is imported; a user's own
allocator setting kept. Observed in the real processes at the moment they import torch."""

import os

import pytest

from tests.conftest import run_cli
from tests.launch.test_profiles import recipe_file

STOPPED_AT_TORCH = 97
# Runs in every Python process started with it on PYTHONPATH: at the process's first `import torch`, record the
# allocator setting it holds and exit, so each check costs a start-up (~1 s), not a training run. `sft launch` stops
# there too, before it starts accelerate: its ranks run sft/run.py, the "run.py" case.
SITECUSTOMIZE = f"""\
import os, sys

def at_torch_import(event, args):
    if event == "import" and args[0] == "torch":
        with open(os.environ["ALLOC_CONF_SEEN"], "w") as seen:
            seen.write(os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "(unset)"))
        os._exit({STOPPED_AT_TORCH})

sys.addaudithook(at_torch_import)
"""


def seen_at_torch_import(tmp_path, entry, recipe, user_env: dict) -> str:
    """PYTORCH_CUDA_ALLOC_CONF as `sft ENTRY RECIPE` (or `python sft/run.py RECIPE`) imports torch, started with
    this process's environment (neither allocator variable set: see the test) plus `user_env`."""
    shim, seen = tmp_path / "shim", tmp_path / "seen.txt"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p),
           "ALLOC_CONF_SEEN": str(seen), **user_env}
    proc = run_cli(entry, recipe, env=env, timeout=300)
    assert proc.returncode == STOPPED_AT_TORCH, proc.stderr[-3000:]
    return seen.read_text()


@pytest.mark.parametrize("entry", ["train", "run.py", "launch"])
def test_training_processes_import_torch_with_expandable_segments_unless_the_user_set_the_allocator(
        entry, tmp_path, tiny_model, monkeypatch):
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)  # the user sets neither, unless a case below does
    recipe = recipe_file(tmp_path, tiny_model, max_steps=1, save_strategy="no")
    assert seen_at_torch_import(tmp_path, entry, recipe, {}) == "expandable_segments:True"
    mine = "max_split_size_mb:128"
    assert seen_at_torch_import(tmp_path, entry, recipe, {"PYTORCH_CUDA_ALLOC_CONF": mine}) == mine
    # torch's newer name wins over PYTORCH_CUDA_ALLOC_CONF: sft sets nothing beside it
    assert seen_at_torch_import(tmp_path, entry, recipe, {"PYTORCH_ALLOC_CONF": mine}) == "(unset)"
