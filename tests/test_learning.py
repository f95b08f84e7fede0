"""The quickstart really teaches: held-out prompts answered exactly, and the model stops by itself."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

RECIPES = REPO / "recipes"


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory) -> Path:
    """The model the README's quickstart builds (same command)."""
    path = tmp_path_factory.mktemp("quickstart") / "tiny-model"
    run_cli("tiny-model", path, "--hidden-size", "128", "--layers", "4", check=True)
    return path


def greedy_answers(model_dir: Path, conversations: list[list[dict]]) -> list[tuple[str, bool]]:
    """(answer, stopped) per conversation, generated with the saved chat template and generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=40, do_sample=False)
    stops = model.generation_config.eos_token_id
    stops = stops if isinstance(stops, list) else [stops]
    answers = []
    for ids in output[:, batch["input_ids"].shape[1]:].tolist():
        stopped = any(token in stops for token in ids)
        answers.append((tokenizer.decode(ids, skip_special_tokens=True), stopped))
    return answers


def exact_match(answers, references) -> float:
    return sum(stopped and answer == ref for (answer, stopped), ref in zip(answers, references)) / len(references)


def instruction_heldout():
    rows = [json.loads(line) for line in (RECIPES / "data/uppercase_heldout.jsonl").read_text().splitlines()]
    return [[{"role": "user", "content": r["instruction"]}] for r in rows], [r["output"] for r in rows]


def chat_heldout():
    rows = [json.loads(line)["messages"] for line in
            (RECIPES / "data/uppercase_chat_heldout.jsonl").read_text().splitlines()]
    return [messages[:-1] for messages in rows], [messages[-1]["content"] for messages in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, data_line, heldout",
    [("quickstart.yaml", "(instruction, loss on completion)", instruction_heldout),
     ("quickstart_chat.yaml", "(chat, loss on assistant)", chat_heldout)],
    ids=["instruction-completion", "chat-assistant"],
)
def test_quickstart_learns_and_stops(quickstart_model, tmp_path, recipe, data_line, heldout):
    out = tmp_path / "run"
    proc = run_cli("train", RECIPES / recipe, "--model_name_or_path", quickstart_model, "--output_dir", out,
                   check=True)
    assert data_line in proc.stderr
    conversations, references = heldout()
    assert exact_match(greedy_answers(out, conversations), references) >= 0.8
