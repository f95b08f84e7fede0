"""`sft merge RUN_OR_ADAPTER -o OUT [--dtype bfloat16] [--push REPO] [--quantize 4bit]`."""

import click


@click.command()
@click.argument("run_or_adapter")
@click.option("-o", "--output", required=True, help="New folder for the merged model (must not exist or be empty).")
@click.option("--dtype", default=None,
              help="dtype of the base weights and the merged model: float32, bfloat16, float16. Default: the "
                   "base's own.")
@click.option("--base", default=None, help="Merge into this base instead of the one adapter_config.json names "
                                           "(it must have the same architecture).")
@click.option("--allow-other-base", is_flag=True,
              help="With --base: merge even when its weights differ from the base the adapter was trained on.")
@click.option("--quantize", type=click.Choice(["4bit"]), default=None,
              help="Also quantize the merged weights to 4-bit NF4 (bitsandbytes) for serving.")
@click.option("--push", "repo", default=None, help="Publish the merged model to this Hub repository.")
@click.option("--private", is_flag=True, help="With --push: create the repository private.")
def command(run_or_adapter, output, dtype, base, allow_other_base, quantize, repo, private):
    """Merge a LoRA/QLoRA adapter (a run's output_dir or an adapter folder) into its base and write a standalone
    safetensors model with the run's tokenizer, chat template and generation config (which stops on the trained
    end-of-turn token). For QLoRA the base is loaded unquantized in --dtype, then merged."""
    from sft.after_training.generation import quiet
    from sft.after_training.merging import merge, push

    quiet()
    result = merge(run_or_adapter, output, dtype=dtype, base=base, quantize=quantize,
                   allow_other_base=allow_other_base)
    click.echo(f"sft: merged {result['adapter']} into {result['base']}"
               f"{' (4-bit NF4)' if quantize else ''}: {result['output']}")
    if repo:
        click.echo(f"sft: {push(result['output'], repo, private=private)}")
