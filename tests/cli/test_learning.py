"""The quickstart really teaches: held-out words answered exactly (case included), by the README's own commands.

Robustness over seeds and transformers releases is measured by `python bench/quickstart.py` (seeds 0-4), not
here: this test runs the README's quickstart once per recipe, as a user would, and holds it to the same bar."""

import json

import pytest

from tests.conftest import REPO, run_cli

RECIPES = REPO / "recipes"


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory):
    """The model the README's quickstart builds (same command)."""
    path = tmp_path_factory.mktemp("quickstart") / "tiny-model"
    run_cli("tiny-model", path, "--hidden-size", "128", "--layers", "4", check=True)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, data_line, heldout",
    [("quickstart.yaml", "(instruction, loss on completion)", "uppercase_heldout.jsonl"),
     ("quickstart_chat.yaml", "(chat, loss on assistant)", "uppercase_chat_heldout.jsonl")],
    ids=["instruction-completion", "chat-assistant"],
)
def test_quickstart_learns_and_stops(quickstart_model, tmp_path, recipe, data_line, heldout):
    out = tmp_path / "run"
    proc = run_cli("train", RECIPES / recipe, "--model_name_or_path", quickstart_model, "--output_dir", out,
                   check=True)
    assert data_line in proc.stderr
    # The README's last quickstart command. Greedy answers must equal the reference exactly, case included; an
    # answer that does not stop runs on past the word and cannot match.
    proc = run_cli("eval", out, "--data", RECIPES / "data" / heldout, "--metrics", "exact_match",
                   "--case-sensitive", "--max-new-tokens", "40", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["rows"] == 100
    predictions = [json.loads(line) for line in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    wrong = [(p["reference"], p["prediction"]) for p in predictions if not p["exact_match"]]
    assert result["exact_match"] >= 0.95, f"held-out exact match {result['exact_match']:.2f}; wrong: {wrong[:10]}"
