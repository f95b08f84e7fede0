"""Built-in chat templates: golden renderings and masks, special tokens, the end-of-turn token, tool calls."""

import json
import os
from pathlib import Path

import pytest

from sft.templates.chat import BUILTIN_TEMPLATES, resolve_template, set_template
from sft.masks.spans import end_of_turn_token
from sft.errors import UserError

GOLDEN = Path(__file__).parent / "golden"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Two plus two?"},
    {"role": "assistant", "content": " 4\n"},
]
END_TOKENS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "zephyr": "</s>",
              "gemma": "<end_of_turn>", "alpaca": "</s>"}


def tokenizer_with(name, kind="char"):
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer(kind)
    set_template(tokenizer, name)
    return tokenizer


def marked(tokenizer, ids, labels, open_mark="⟦", close_mark="⟧"):
    from sft.commands.preview import runs

    return "".join(
        (open_mark + tokenizer.decode(run) + close_mark) if trained else tokenizer.decode(run)
        for trained, run in runs(ids, labels)
    )


def trained_pieces(tokenizer, row) -> list[str]:
    from sft.commands.preview import runs

    return [tokenizer.decode(run) for trained, run in runs(row["input_ids"], row["labels"]) if trained]


def encode(tokenizer, examples, loss_mode="assistant"):
    from datasets import Dataset

    from sft.masks.tokenize import tokenize_dataset

    rows = Dataset.from_dict({"example": [json.dumps(e) for e in examples]})
    return tokenize_dataset(rows, tokenizer, loss_mode)[0]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_golden_rendering_and_mask(name):
    """The exact text each built-in template renders and, between ⟦ ⟧, the exact characters trained (one token
    per character). Regenerate with SFT_UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    tokenizer = tokenizer_with(name)
    row = encode(tokenizer, [{"messages": CONVERSATION}])[0]
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    got = f"== rendering ==\n{rendered}\n== trained ==\n{marked(tokenizer, row['input_ids'], row['labels'])}\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("SFT_UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text()
    # What the golden files say, checked independently: each answer and its end token, nothing else.
    end = END_TOKENS[name]
    assert trained_pieces(tokenizer, row) == ["Hello!" + end, " 4\n" + end]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_special_tokens_are_single_tokens_and_end_token_found(name):
    tokenizer = tokenizer_with(name)
    for token in BUILTIN_TEMPLATES[name]:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
        assert token in tokenizer.all_special_tokens
    assert end_of_turn_token(tokenizer) == END_TOKENS[name]


def test_template_sources(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}")
    assert resolve_template(str(path), None, "r.yaml")[0] == path.read_text()
    assert resolve_template("{{ 'x' }}", None, "r.yaml") == ("{{ 'x' }}", [])
    assert resolve_template(None, None, "r.yaml") == (None, [])
    with pytest.raises(UserError, match=r"r.yaml: chat_template 'chatlm' is not a built-in template \(chatml"):
        resolve_template("chatlm", None, "r.yaml")
    with pytest.raises(UserError, match="missing.jinja not found"):
        resolve_template(str(tmp_path / "missing.jinja"), None, "r.yaml")


def test_added_tokens_are_reported_once(tmp_path):
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char")
    assert set_template(tokenizer, "llama3") == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert set_template(tokenizer, "llama3") == []  # already there: nothing to resize
    assert set_template(tokenizer, "chatml") == []  # the tiny tokenizer has ChatML's tokens


TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"type": "function",
                                          "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
]


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_tool_calls_are_trained_and_tool_results_are_not(name):
    tokenizer = tokenizer_with(name, "bpe")
    trained = trained_pieces(tokenizer, encode(tokenizer, [{"messages": TOOL_TURNS}])[0])
    end = END_TOKENS[name]
    assert len(trained) == 2
    assert '"weather"' in trained[0] and '"Paris"' in trained[0] and trained[0].endswith(end)
    assert "sunny" not in trained[0] and trained[1] == "It is sunny." + end


def test_templates_without_tools_say_so():
    tokenizer = tokenizer_with("mistral")
    with pytest.raises(UserError, match="mistral: this template has no tool calls or tool turns; use chatml or llama3"):
        encode(tokenizer, [{"messages": TOOL_TURNS}])
