"""sft/recipe/finalize.py: the one place a recipe is changed, and what the resolved recipe records of it."""

import pytest
import yaml

from sft.errors import UserError
from sft.recipe.finalize import take_push_request
from sft.recipe.load import load_recipe
from sft.recipe.resolved import write_resolved
from tests.conftest import write_recipe

TOKEN = "hf_finalizeTest0123456789"


def pushing_recipe(tmp_path):
    return write_recipe(tmp_path / "r.yaml", model_name_or_path="m", output_dir=str(tmp_path / "out"),
                        push_to_hub=True, hub_model_id="author/run")


def test_resolved_recipe_records_the_push_asked_for(tmp_path, monkeypatch):
    """The Trainer's own pushes are off (sft pushes once, at the end), but output_dir/recipe.yaml says
    push_to_hub: true, as the recipe did (it said false before)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = load_recipe(str(pushing_recipe(tmp_path)))
    push = take_push_request(recipe)
    assert push == {"repo_id": "author/run", "token": None, "private": False, "revision": None}
    assert recipe.training.push_to_hub is False  # the Trainer does not push every checkpoint
    write_resolved(recipe, tmp_path / "resolved.yaml")
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert resolved["push_to_hub"] is True and resolved["hub_model_id"] == "author/run"
    assert TOKEN not in (tmp_path / "resolved.yaml").read_text()


def test_a_reproduction_pushes_only_where_its_command_line_says(tmp_path, monkeypatch):
    """`sft train runs/x/recipe.yaml` (a resolved recipe: it has provenance) trains without pushing to the original
    author's repo; --hub_model_id or --push_to_hub on the command line pushes."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    first = load_recipe(str(pushing_recipe(tmp_path)))
    take_push_request(first)
    resolved = tmp_path / "resolved.yaml"
    write_resolved(first, resolved)

    again = load_recipe(str(resolved))
    assert take_push_request(again) is None
    assert again.training.push_to_hub is False
    assert again.notes[-1] == (f"{resolved} is the resolved recipe of an earlier run: not pushing to author/run (its "
                               "push_to_hub); pass --push_to_hub true and --hub_model_id YOUR/REPO to push")
    write_resolved(again, tmp_path / "again.yaml")  # the reproduction's own resolved recipe asks the same
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["push_to_hub"] is True

    mine = load_recipe(str(resolved), ["--hub_model_id", "me/rerun"])
    assert take_push_request(mine)["repo_id"] == "me/rerun"
    asked = load_recipe(str(resolved), ["--push_to_hub", "true"])
    assert take_push_request(asked)["repo_id"] == "author/run"


def test_push_without_a_token_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no login cache either
    recipe = load_recipe(str(pushing_recipe(tmp_path)))
    with pytest.raises(UserError, match=r"r.yaml: push_to_hub is true but no Hub token was found; set HF_TOKEN"):
        take_push_request(recipe)


def test_trl_loss_switches_and_early_stopping_are_read_when_the_recipe_loads(tmp_path):
    base = {"model_name_or_path": "m", "output_dir": str(tmp_path / "out")}
    recipe = load_recipe(str(write_recipe(tmp_path / "a.yaml", **base, completion_only_loss=False)))
    assert recipe.sft.loss_mode == "all" and "completion_only_loss: false is read as loss_mode: all" in recipe.notes
    with pytest.raises(UserError, match=r"b.yaml: assistant_only_loss: true contradicts loss_mode: all; keep one"):
        load_recipe(str(write_recipe(tmp_path / "b.yaml", **base, assistant_only_loss=True, loss_mode="all")))
    recipe = load_recipe(str(write_recipe(tmp_path / "c.yaml", **base, early_stopping_patience=2,
                                          eval_strategy="steps")))
    assert recipe.training.metric_for_best_model == "eval_loss" and recipe.training.greater_is_better is False
    recipe = load_recipe(str(write_recipe(tmp_path / "d.yaml", **base, early_stopping_patience=2,
                                          eval_strategy="steps", metric_for_best_model="eval_perplexity")))
    assert recipe.training.greater_is_better is False  # perplexity, like a loss, is better lower
