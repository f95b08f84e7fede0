"""`sft train RECIPE [--key value ...]`: one fine-tuning run (the same code path as `python sft/run.py`)."""

import dataclasses

import click

from sft.recipe.fields import SftArguments

OWN_KEYS = "\n".join(f"  {f.name}: {f.metadata.get('help', '')}" for f in dataclasses.fields(SftArguments)
                     if f.name != "provenance")


def print_every_key(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from sft.recipe.help import every_key_text

    click.echo(every_key_text())
    ctx.exit(0)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    epilog="\b\nsft's own recipe keys:\n" + OWN_KEYS,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--help-all", is_flag=True, is_eager=True, expose_value=False, callback=print_every_key,
              help="List every key a recipe accepts (sft's, TRL's, transformers' and PEFT's), grouped by where it "
                   "comes from, with its type and default, and exit.")
def command(args):
    """Train from a recipe: `sft train RECIPE [--key value ...]`, TRL's `sft train --config RECIPE [--key value ...]`,
    or every key as a flag (`sft train --model_name_or_path M --dataset_name D --output_dir O`). Command line >
    recipe > defaults; each value is read as its field's type (`--eval_strategy no` is the string, `--bf16 no`
    false, `--lora_target_modules q_proj v_proj` a list).

    Keys are TRL's and transformers' own field names (SFTConfig/TrainingArguments, ModelConfig, ScriptArguments,
    DatasetMixtureConfig), alignment-handbook's dataset_mixture and chat_template, and sft's own keys below
    (`--help-all` lists them all). `accelerate_config: NAME` and/or `num_processes: N` run it under
    `sft launch` with that profile. If output_dir holds checkpoints the run resumes from the newest complete one;
    --fresh starts over."""
    from sft.errors import UserError
    from sft.run import main

    if not args:
        raise UserError("give a recipe (sft train RECIPE, or --config RECIPE) or every key as a flag "
                        "(--model_name_or_path M --dataset_name D --output_dir O)")
    main(list(args))
