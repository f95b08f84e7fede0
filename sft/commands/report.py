"""`sft report RUN_DIR [RUN_B]`: PNG curves and a markdown summary of one run, or two overlaid."""

import click


@click.command()
@click.argument("run_dir")
@click.argument("run_b", required=False)
@click.option("-o", "--output", default=None,
              help="Folder for the PNGs and summary.md. Default: RUN_DIR/report (RUN_DIR/report-vs-B for two runs).")
def command(run_dir, run_b, output):
    """Plot train and eval loss, learning rate, grad norm and tokens per second over steps, from the run's
    metrics.jsonl (or trainer_state.json), and write summary.md beside the plots. With RUN_B, both runs are
    overlaid on each plot and summarised side by side."""
    from sft.after_training.report import report

    result = report(run_dir, run_b, output)
    click.echo(f"sft: {len(result['images'])} plots and summary.md written to {result['output']}")
