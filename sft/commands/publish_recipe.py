"""`sft publish-recipe RECIPE REPO [--with-data]`: upload a recipe (and its local data) to the Hub."""

import click


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("repo")
@click.option("--with-data", is_flag=True, help="Also upload the local data files the recipe names (paths are "
                                                 "rewritten to repo-relative ones).")
@click.option("--path-in-repo", default=None, help="Where the recipe goes in the repo (default: its file name).")
@click.option("--revision", default=None, help="Branch to commit to (created if missing; default: main).")
@click.option("--repo-type", type=click.Choice(["model", "dataset"]), default="model", show_default=True)
@click.option("--private", is_flag=True, help="Create the repo private.")
def command(recipe, repo, with_data, path_in_repo, revision, repo_type, private):
    """Publish RECIPE to the Hub repo REPO (OWNER/NAME), so that `sft train hf://REPO/RECIPE` reproduces it
    elsewhere. The token comes from HF_TOKEN or `hf auth login`; tokens in the recipe are never uploaded."""
    from sft.hub.publish import publish_recipe

    address, notes = publish_recipe(recipe, repo, with_data=with_data, path_in_repo=path_in_repo,
                                    revision=revision, private=private, repo_type=repo_type)
    for note in notes:
        click.echo(f"sft: {note}", err=True)
    click.echo(f"published {address}\ntrain it anywhere with: sft train {address}")
