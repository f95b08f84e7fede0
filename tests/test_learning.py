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


@pytest.mark.slow
def test_quickstart_learns_instruction_data(quickstart_model, tmp_path):
    out = tmp_path / "quickstart"
    proc = run_cli("train", RECIPES / "quickstart.yaml", "--model_name_or_path", quickstart_model,
                   "--output_dir", out, check=True)
    assert "(instruction, loss on completion)" in proc.stderr
    rows = [json.loads(line) for line in (RECIPES / "data/uppercase_heldout.jsonl").read_text().splitlines()]
    answers = greedy_answers(out, [[{"role": "user", "content": r["instruction"]}] for r in rows])
    assert exact_match(answers, [r["output"] for r in rows]) >= 0.8


@pytest.mark.slow
def test_quickstart_learns_chat_data_in_assistant_mode(quickstart_model, tmp_path):
    out = tmp_path / "quickstart-chat"
    proc = run_cli("train", RECIPES / "quickstart_chat.yaml", "--model_name_or_path", quickstart_model,
                   "--output_dir", out, check=True)
    assert "(chat, loss on assistant)" in proc.stderr
    rows = [json.loads(line)["messages"] for line in
            (RECIPES / "data/uppercase_chat_heldout.jsonl").read_text().splitlines()]
    answers = greedy_answers(out, [messages[:-1] for messages in rows])
    assert exact_match(answers, [messages[-1]["content"] for messages in rows]) >= 0.8
