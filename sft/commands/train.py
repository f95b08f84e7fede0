"""`sft train RECIPE [--key value ...]`: one fine-tuning run (the same code path as `python sft/run.py`)."""

import dataclasses

import click

from sft.recipe import SftArguments

OWN_KEYS = "\n".join(f"  {f.name}: {f.metadata.get('help', '')}" for f in dataclasses.fields(SftArguments)
                     if f.name != "provenance")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="\b\nsft's own recipe keys:\n" + OWN_KEYS,
)
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def command(recipe, overrides):
    """Train from RECIPE (a YAML file). Any recipe key can be overridden after it, as in
    `sft train recipe.yaml --learning_rate 1e-4 --max_steps 10`: command line > recipe > defaults.

    Keys are TRL's and transformers' own field names (SFTConfig/TrainingArguments, ModelConfig, ScriptArguments,
    DatasetMixtureConfig), alignment-handbook's dataset_mixture and chat_template, and sft's own keys below.
    If output_dir holds checkpoints the run resumes from the newest complete one; --fresh starts over."""
    from sft.run import main

    main([recipe, *overrides])
