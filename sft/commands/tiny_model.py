"""`sft tiny-model OUT`: build a tiny Llama-style model with its own tokenizer and chat template, offline."""

import click


@click.command()
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--tokenizer", "kind", type=click.Choice(["char", "bpe"]), default="char", show_default=True)
@click.option("--hidden-size", default=64, show_default=True)
@click.option("--layers", default=2, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
def command(output_dir, kind, hidden_size, layers, heads, seed):
    """Build a tiny, randomly initialised Llama model folder (no download)."""
    from sft.tiny import build_tiny_model

    path = build_tiny_model(output_dir, kind=kind, hidden_size=hidden_size, layers=layers, heads=heads, seed=seed)
    click.echo(f"tiny model saved to {path}")
