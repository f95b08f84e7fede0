"""`sft launch RECIPE [--profile auto|NAME] [--num-processes N]`: accelerate launch with the profile that fits."""

import click

from sft.profiles import PROFILES  # standard library only: --help stays instant

PROFILE_NAMES = ["auto", *PROFILES]


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--profile", default="auto", show_default=True, type=click.Choice(PROFILE_NAMES),
              help="A profile in accelerate_configs/, or auto: the cheapest that fits, by `sft plan`.")
@click.option("--num-processes", "num_processes", type=int,
              help="Processes to start (default: every GPU; on a machine without GPUs, 1).")
@click.option("--dry-run", is_flag=True, help="Print the profile and the command; start nothing.")
def command(recipe, overrides, profile, num_processes, dry_run):
    """Train RECIPE under `accelerate launch` with a profile from accelerate_configs/: the cheapest one the memory
    planner finds fits the GPUs of this machine (or, without GPUs, CPU processes over gloo). Combinations that
    cannot work are refused before anything starts. Recipe keys can be overridden after RECIPE."""
    import sys

    from sft.launch import launch

    sys.exit(launch(recipe, overrides, profile, num_processes, dry_run))
