"""`sft env`: sft's own setup, then TRL's and accelerate's env reports, with the installed versions."""

import platform
from importlib.metadata import PackageNotFoundError, version

from tests.conftest import REPO, run_cli


def test_env_prints_sft_trl_and_accelerate_versions(tmp_path):
    proc = run_cli("env", env={"SFT_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    import torch

    expected = [
        f"- sft version: {version('sft')}",
        f"- sft location: {REPO / 'sft'}",
        f"- launch profiles: {REPO / 'accelerate_configs'}",
        f"- tokenized data cache: {tmp_path / 'cache'} (set SFT_CACHE_DIR to move it)",
        # TRL's `trl env`
        f"- TRL version: {version('trl')}",
        f"- Transformers version: {version('transformers')}",
        f"- PEFT version: {version('peft')}",
        f"- Datasets version: {version('datasets')}",
        f"- PyTorch version: {torch.__version__}",
        # accelerate's `accelerate env`
        f"- `Accelerate` version: {version('accelerate')}",
        f"- Python version: {platform.python_version()}",
    ]
    for line in expected:
        assert line in lines, f"{line!r} not in:\n{proc.stdout}"
    for name, distribution in [("deepspeed", "deepspeed"), ("bitsandbytes", "bitsandbytes"),
                               ("flash-attn", "flash-attn"), ("liger", "liger-kernel"), ("kernels", "kernels"),
                               ("wandb", "wandb"), ("trackio", "trackio"), ("tensorboard", "tensorboard"),
                               ("lm-eval", "lm-eval")]:
        [line] = [line for line in lines if line.startswith(f"- {name}: ")]
        try:
            assert line.startswith(f"- {name}: {version(distribution)} (")
        except PackageNotFoundError:
            assert line.startswith(f"- {name}: not installed (")
