"""`sft env`: what to paste into a bug report: sft's own setup, then what `trl env` and `accelerate env` print."""

import click

# Optional integrations: (what users call it, distribution name, what it enables in sft).
OPTIONAL = (
    ("deepspeed", "deepspeed", "ZeRO launch profiles"),
    ("bitsandbytes", "bitsandbytes", "qlora, load_in_8bit"),
    ("flash-attn", "flash-attn", "attn_implementation: flash_attention_2"),
    ("liger", "liger-kernel", "use_liger_kernel"),
    ("kernels", "kernels", "attn_implementation: kernels-community/..."),
    ("wandb", "wandb", "report_to: wandb"),
    ("trackio", "trackio", "report_to: trackio"),
    ("tensorboard", "tensorboard", "report_to: tensorboard"),
    ("lm-eval", "lm-eval", "sft eval --tasks"),
)


def installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def sft_info() -> dict[str, str]:
    from pathlib import Path

    import sft
    from sft.masks.cache import cache_root
    from sft.launch.profiles import ACCELERATE_CONFIGS

    info = {
        "sft version": installed_version("sft") or "not installed (run from a source tree)",
        "sft location": str(Path(sft.__file__).resolve().parent),
        "launch profiles": str(ACCELERATE_CONFIGS),
        "tokenized data cache": f"{cache_root()} (set SFT_CACHE_DIR to move it)",
    }
    for name, distribution, enables in OPTIONAL:
        found = installed_version(distribution)
        info[name] = f"{found} ({enables})" if found else f"not installed ({enables} unavailable)"
    return info


@click.command()
def command():
    """Print sft's version, install location, launch profiles folder, data cache and which optional integrations
    are installed, followed by what `trl env` and `accelerate env` print (platform, Python, torch, accelerators,
    library versions, the default accelerate config). Paste it all into a bug report."""
    from types import SimpleNamespace

    from accelerate.commands.env import env_command
    from trl.scripts.env import print_env

    click.echo("\nsft:\n")
    click.echo("\n".join(f"- {key}: {value}" for key, value in sft_info().items()))
    print_env()  # TRL's `trl env`
    env_command(SimpleNamespace(config_file=None))  # accelerate's `accelerate env`, with its default config
