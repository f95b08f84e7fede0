"""`sft push RUN_DIR REPO`: upload a finished run with its model card to the Hub."""

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("repo")
@click.option("--revision", default=None, help="Branch to commit to (created if missing; default: main).")
@click.option("--private", is_flag=True, help="Create the repo private.")
def command(run_dir, repo, revision, private):
    """Push RUN_DIR (an `sft train` output_dir) to the Hub repo REPO: weights or adapter, tokenizer, chat
    template, the resolved recipe and a model card (datasets, eval metrics, package versions, the command that
    reproduces the run). Checkpoints, optimizer states and training_args.bin stay local."""
    from sft.hub.publish import push_run

    click.echo(push_run(run_dir, repo, private=private, revision=revision))
