"""`sft train RECIPE [--key value ...]`: one fine-tuning run (the same code path as `python sft/run.py`)."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def command(recipe, overrides):
    """Train from RECIPE (a YAML file). Any recipe key can be overridden after it, as in
    `sft train recipe.yaml --learning_rate 1e-4 --max_steps 10`: command line > recipe > defaults.

    Keys are TRL's and transformers' own field names (SFTConfig/TrainingArguments, ModelConfig, ScriptArguments,
    DatasetMixtureConfig) plus sft's: method, trainable_layers, trainable_modules, chat_template, dataset_mixture,
    dataset_format, column_mapping, loss_mode, instruction_template, skip_bad_rows, resume, env.
    If output_dir holds checkpoints the run resumes from the newest complete one; --fresh starts over."""
    from sft.run import main

    main([recipe, *overrides])
