"""`sft launch RECIPE [--profile auto|NAME] [--num-processes N]`: accelerate launch with the profile that fits."""

import click

from sft.launch.profiles import PROFILES  # standard library only: --help stays instant

PROFILE_NAMES = ["auto", *PROFILES]


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--profile", type=click.Choice(PROFILE_NAMES),
              help="A profile in accelerate_configs/, or auto: the cheapest that fits, by `sft plan`. Default: the "
                   "recipe's accelerate_config, else auto.")
@click.option("--num-processes", "num_processes", type=int,
              help="Processes to start (default: the recipe's num_processes, else every GPU; on a machine without "
                   "GPUs, 1).")
@click.option("--dry-run", is_flag=True, help="Print the profile and the command; start nothing.")
def command(args, profile, num_processes, dry_run):
    """Train RECIPE under `accelerate launch` with a profile from accelerate_configs/: the cheapest one the memory
    planner finds fits the GPUs of this machine (or, without GPUs, CPU processes over gloo). Combinations that
    cannot work are refused before anything starts. The recipe is given as to `sft train` (RECIPE or --config
    RECIPE, or keys alone), with overrides after it."""
    import sys

    from sft.launch.launcher import launch
    from sft.recipe.command_line import split_command_line

    sys.exit(launch(*split_command_line(args), profile, num_processes, dry_run))
