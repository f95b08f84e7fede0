"""`sft plan RECIPE --gpus N --gpu-memory GB`: peak memory per GPU under every launch profile, before you queue."""

import click

from sft.launch.memory import __doc__ as MODEL_DOC


EPILOG = "How each column is estimated:\n\n\b\n" + MODEL_DOC.split("The estimate adds up, per GPU:\n")[1]


@click.command(context_settings={"ignore_unknown_options": True}, epilog=EPILOG)
@click.argument("recipe")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--gpus", type=int, required=True, help="GPUs per node.")
@click.option("--gpu-memory", "gpu_memory", type=float, required=True, help="Memory of one GPU in GB (1e9 bytes).")
@click.option("--nodes", type=int, default=1, show_default=True, help="Number of nodes.")
@click.option("--model-config", "model_config", type=click.Path(exists=True),
              help="A config.json (or model folder) to count parameters from instead of model_name_or_path.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def command(recipe, overrides, gpus, gpu_memory, nodes, model_config, as_json):
    """Estimate the peak memory per GPU of RECIPE under every profile in accelerate_configs/, say which fit with
    10% headroom, recommend the cheapest that fits and print its launch command. Needs only the model's config
    (no weights). Recipe keys can be overridden after RECIPE, as in `sft train`."""
    import json

    from sft.launch.plan import make_plan, render
    from sft.recipe.load import load_recipe

    loaded = load_recipe(recipe, overrides)
    plan = make_plan(loaded, gpus, gpu_memory, nodes, model_config, recipe_address=recipe)
    click.echo(json.dumps(plan, indent=2) if as_json else render(plan), nl=as_json)
