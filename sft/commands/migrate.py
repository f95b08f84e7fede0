"""`sft migrate FILE -o recipe.yaml`: an axolotl or LLaMA-Factory config as an sft recipe."""

from pathlib import Path

import click


@click.command()
@click.argument("config")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The recipe file to write (refused if it exists, unless --force).")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def command(config, output, force):
    """Write the sft recipe equivalent to CONFIG, an axolotl or LLaMA-Factory training YAML, and list every key
    that was mapped (from -> to) and every key that could not be, with why. LLaMA-Factory dataset names are looked
    up in dataset_info.json under its dataset_dir (default data/). DeepSpeed configs become a launch profile."""
    from sft.migrate.convert import check_output, migrate, report_lines, write

    check_output(config, output, force)
    migration = migrate(config)
    write(migration, output)
    click.echo("\n".join(report_lines(migration, output)))
