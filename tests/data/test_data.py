"""Data in: formats, sources, mixtures, the eval split, bad rows named by file and line; `sft check` and
`sft preview` on the same code path as `sft train`."""

import json

import pytest

from sft.data.prepare import prepare_data, recipe_tokenizer
from sft.errors import UserError
from sft.recipe.load import load_recipe
from tests.conftest import run_cli, write_recipe

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(tmp_path, tiny_model, strict=True, **values):
    values.setdefault("output_dir", str(tmp_path / "out"))
    values.setdefault("data_cache", False)
    recipe = load_recipe(str(write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), **values)))
    return prepare_data(recipe, recipe_tokenizer(recipe), strict=strict)


def decoded_answers(data, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return sorted(tokenizer.decode([t for t in row["labels"] if t != -100]) for row in data.train)


# ---------------------------------------------------------------------------------------------------------------
# Formats and sources


def test_every_format_is_detected_and_trained_on_its_answer(tmp_path, tiny_model):
    rows = {
        "chat.jsonl": [CHAT],
        "sharegpt.jsonl": [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
        "instruction.jsonl": [{"instruction": "Add", "input": "2 and 2", "output": "4"}],
        "pc.jsonl": [{"prompt": "Q: sky?\nA:", "completion": " blue"}],
        "pr.jsonl": [{"prompt": "Q: grass?\nA:", "response": " green"}],
        "pc_chat.jsonl": [{"prompt": [{"role": "user", "content": "ping"}],
                           "completion": [{"role": "assistant", "content": "pong"}]}],
        "text.jsonl": [{"text": "Once upon a time."}],
    }
    entries = []
    for name, content in rows.items():
        write_jsonl(tmp_path / name, content)
        entries.append({"path": name})
    data = prepared(tmp_path, tiny_model, datasets=entries)
    assert [s["format"] for s in data.stats["sources"]] == [
        "chat", "sharegpt", "instruction", "prompt_completion", "prompt_completion", "prompt_completion", "text"]
    assert decoded_answers(data, tiny_model) == sorted([
        "hello<|im_end|>", "yo<|im_end|>", "4<|im_end|>", " blue</s>", " green</s>", "pong<|im_end|>",
        "Once upon a time.</s>"])


def test_instruction_data_through_the_alpaca_prompt(tmp_path, tiny_model):
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "2 and 2", "output": "4"}])
    data = prepared(tmp_path, tiny_model, dataset_name="a.jsonl", instruction_template="alpaca")
    from transformers import AutoTokenizer

    ids = data.train[0]["input_ids"]
    text = AutoTokenizer.from_pretrained(tiny_model).decode(ids)
    assert text.startswith("Below is an instruction") and "### Input:\n2 and 2\n\n### Response:\n4</s>" in text
    assert decoded_answers(data, tiny_model) == ["4</s>"]


def test_local_file_types_folders_globs_and_load_dataset(tmp_path, tiny_model):
    import pandas as pd

    rows = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(3)]
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows)
    (folder / "b.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(folder / "c.csv", index=False)
    pd.DataFrame(rows).to_parquet(folder / "d.parquet")
    (tmp_path / "t.txt").write_text("line one\nline two\n")
    data = prepared(tmp_path, tiny_model, datasets=[
        {"path": "data"}, {"path": "data/*.jsonl"}, {"path": "t.txt"},
        {"path": "json", "data_files": {"train": str(folder / "a.jsonl")}},  # through datasets.load_dataset
    ])
    assert [(s["rows"], s["examples"]) for s in data.stats["sources"]] == [(12, 12), (3, 3), (2, 2), (3, 3)]
    wheres = set(data.train_full["where"])
    assert {f"{folder}/a.jsonl:1", f"{folder}/c.csv row 3", f"{folder}/d.parquet row 1", "json[train] row 2"} <= wheres


def test_column_mapping_and_forced_format(tmp_path, tiny_model):
    write_jsonl(tmp_path / "q.jsonl", [{"question": "sky?", "answer": " blue", "id": 1}])
    data = prepared(tmp_path, tiny_model, dataset_name="q.jsonl",
                    column_mapping={"question": "prompt", "answer": "completion"})
    assert decoded_answers(data, tiny_model) == [" blue</s>"]
    write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "messages": CHAT["messages"]}])
    data = prepared(tmp_path, tiny_model, datasets=[{"path": "c.jsonl", "format": "text", "columns": ["text"]}])
    assert data.stats["sources"][0]["format"] == "text"


# ---------------------------------------------------------------------------------------------------------------
# Bad rows: one line naming file, line and reason


BAD_ROWS = [
    ({"messages": [{"role": "user", "content": "hi"}]}, "ends on a user turn, not an assistant turn"),
    ({"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "message 1 has unknown role 'human'; expected one of system, user, assistant, tool"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     "message 2 (assistant) has empty content"),
    ({"messages": []}, "'messages' must be a non-empty list of messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "roles must alternate user/assistant/user/..."),
]


@pytest.mark.parametrize("row, reason", BAD_ROWS, ids=["ends-on-user", "role", "empty", "missing", "alternation"])
def test_bad_rows_name_file_line_and_reason(tmp_path, tiny_model, row, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT, CHAT, row, CHAT])
    with pytest.raises(UserError) as caught:
        prepared(tmp_path, tiny_model, dataset_name=str(path), chat_template="mistral")
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ") and reason in message and "skip_bad_rows" in message
    assert "\n" not in message
    data = prepared(tmp_path, tiny_model, dataset_name=str(path), chat_template="mistral", skip_bad_rows=True)
    assert data.stats["kept"] == 3 and data.stats["skipped_bad"] == 1


def test_bad_input_exits_2_with_one_line(tmp_path, tiny_model):
    """Through the CLI: malformed JSON and a bad row each give exit code 2 and one line naming file and line."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + '{"messages": [}\n')
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), dataset_name=str(path),
                          output_dir=str(tmp_path / "out"))
    proc = run_cli("train", recipe)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {path}:3: not valid JSON")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    write_jsonl(path, [CHAT, {"messages": [{"role": "user", "content": "hi"}]}])
    proc = run_cli("check", recipe)
    assert proc.returncode == 2
    assert f"error: {path}:2: the conversation ends on a user turn" in proc.stderr
    assert "The run would not start (1 problem(s))." in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Mixtures and the eval split


def test_trl_mixture_with_fractions_formats_and_columns(tmp_path, tiny_model):
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                        {"role": "assistant", "content": f"a{i}"}]}
                                          for i in range(20)])
    write_jsonl(tmp_path / "qa.jsonl", [{"q": f"Q{i}:", "a": f" A{i}"} for i in range(10)])
    data = prepared(tmp_path, tiny_model, datasets=[
        {"path": "chat.jsonl", "fraction": 0.5},
        {"path": "qa.jsonl", "fraction": 0.5, "format": "prompt_completion",
         "column_mapping": {"q": "prompt", "a": "completion"}},
    ])
    # TRL's rule: shares of the mixture, no source oversampled, first rows kept -> 10 + 10
    assert [(s["format"], s["examples"]) for s in data.stats["sources"]] == [("chat", 10), ("prompt_completion", 10)]
    with pytest.raises(UserError, match=r"'datasets' must be a mapping with keys .*\(unknown: fromat\)"):
        prepared(tmp_path, tiny_model, datasets=[{"path": "chat.jsonl", "fromat": "chat"}])
    with pytest.raises(UserError, match=r"datasets\[0\]\.format: must be one of chat, sharegpt"):
        prepared(tmp_path, tiny_model, datasets=[{"path": "chat.jsonl", "format": "chatml"}])


def test_handbook_mixture_with_weights_and_a_seeded_eval_split_without_overlap(tmp_path, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(40)]
    write_jsonl(tmp_path / "a.jsonl", rows + rows[:5])  # five exact duplicates
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"do {i}", "output": f"done {i}"} for i in range(20)])
    mixture = {"datasets": [{"id": "a.jsonl", "weight": 1.0}, {"id": "b.jsonl", "weight": 0.5}],
               "test_split_size": 0.2, "seed": 7}
    data = prepared(tmp_path, tiny_model, dataset_mixture=mixture)
    stats = data.stats
    assert stats["duplicates_removed"] == 5
    assert stats["kept"] + stats["eval_examples"] == 40 + 10
    assert stats["eval_examples"] == 10
    train_ids = {tuple(r) for r in data.train["input_ids"]}
    eval_ids = {tuple(r) for r in data.eval["input_ids"]}
    assert not train_ids & eval_ids  # nothing is both trained and evaluated on
    again = prepared(tmp_path, tiny_model, dataset_mixture=mixture)
    assert again.eval["input_ids"] == data.eval["input_ids"]  # seeded
    other = prepared(tmp_path, tiny_model, dataset_mixture={**mixture, "seed": 8})
    assert other.eval["input_ids"] != data.eval["input_ids"]
    by_count = prepared(tmp_path, tiny_model, dataset_mixture={**mixture, "test_split_size": 3})
    assert by_count.stats["eval_examples"] == 3 and len(data.eval_rows) == 10
    with pytest.raises(UserError, match=r"dataset_mixture\.datasets\[1\]: unknown key 'wieght'; did you mean "
                                        r"'weight'\?"):
        prepared(tmp_path, tiny_model, dataset_mixture={"datasets": [{"id": "a.jsonl"},
                                                                     {"id": "b.jsonl", "wieght": 0.5}]})


def test_evaluation_without_eval_data_is_refused(tmp_path, tiny_model):
    write_jsonl(tmp_path / "a.jsonl", [CHAT] * 4)
    with pytest.raises(UserError, match="eval_strategy is steps but there is no eval data; set test_split_size"):
        prepared(tmp_path, tiny_model, dataset_name="a.jsonl", eval_strategy="steps")


def test_trl_assistant_only_loss_is_read_as_assistant_mode(tmp_path, tiny_model):
    write_jsonl(tmp_path / "a.jsonl", [CHAT])
    recipe = load_recipe(str(write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model),
                                          dataset_name="a.jsonl", assistant_only_loss=True, data_cache=False,
                                          output_dir=str(tmp_path / "out"))))
    # read by sft/recipe/finalize.py as the recipe is loaded (the note is the recipe's, printed with its others)
    assert recipe.sft.loss_mode == "assistant" and recipe.training.assistant_only_loss is False
    assert any("assistant_only_loss: true is read as" in note for note in recipe.notes)
    data = prepare_data(recipe, recipe_tokenizer(recipe))
    assert data.stats["loss_mode"] == "assistant"


# ---------------------------------------------------------------------------------------------------------------
# sft check and sft preview


def test_check_and_preview(tmp_path, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"ans {i}"}]}
            for i in range(10)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), dataset_name="a.jsonl",
                          output_dir=str(tmp_path / "out"), max_length=40)
    from click.testing import CliRunner

    from sft.cli import cli

    def sft(*args):  # in-process: the same command objects `sft` runs, without a new interpreter each time
        result = CliRunner().invoke(cli, [str(a) for a in args], env={"SFT_CACHE_DIR": str(tmp_path / "cache")})
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    out = sft("check", recipe).stdout
    assert "source 1: " in out and "a.jsonl: chat, 10 rows, 10 training examples, 0 bad rows" in out
    assert "tokens per example: p50 " in out and "tokens trained: " in out
    assert "max_length 40: 0 examples truncated, 0 dropped" in out and out.strip().endswith("OK: the run would start.")
    assert "tokenized data: cached for the run" in out
    assert "tokenized data: reused from the cache" in sft("check", recipe).stdout  # same data, tokenizer, template
    assert "tokenized data: cached for the run" in sft("check", recipe, "--chat_template", "zephyr").stdout

    shown = [json.loads(line) for line in sft("preview", recipe, "-n", "2", "--json").stdout.splitlines()]
    recipe_obj = load_recipe(str(recipe))
    expected = prepare_data(recipe_obj, recipe_tokenizer(recipe_obj)).train
    assert [(s["input_ids"], s["labels"]) for s in shown] == [(r["input_ids"], r["labels"]) for r in
                                                              expected.select(range(2))]
    out = sft("preview", recipe, "-n", "1").stdout
    assert "trained tokens between ⟦ and ⟧" in out and "a.jsonl:1 · 36 tokens, 6 trained" in out
    assert "<|im_start|>assistant\n⟦ans 0<|im_end|>⟧" in out


def test_sft_eval_recipe_evaluates_on_the_rows_training_held_out(tmp_path, tiny_model):
    """`sft eval --recipe` reads the eval split through the same pipeline as training: with test_split_size, and
    with the source's own test split (eval_strategy set, no test_split_size), where it used to find none."""
    from sft.data.prepare import load_recipe_data

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(30)]
    train, test = write_jsonl(tmp_path / "tr.jsonl", rows[:20]), write_jsonl(tmp_path / "te.jsonl", rows[18:])
    by_size = dict(dataset_name=str(train), test_split_size=0.25)
    own_split = dict(datasets=[{"path": "json", "data_files": {"train": str(train), "test": str(test)}}],
                     eval_strategy="steps", eval_steps=1)
    for values, expected in ((by_size, 5), (own_split, 12)):
        data = prepared(tmp_path, tiny_model, **values)
        recipe = load_recipe(str(tmp_path / "recipe.yaml"))
        trained, held_out, _ = load_recipe_data(recipe)
        assert len(held_out) == expected and list(held_out) == list(data.eval_rows)
        assert not {json.dumps(r) for r in held_out} & {json.dumps(r) for r in trained}
    assert data.stats["duplicates_removed"] == 2  # q18, q19 are in both files: evaluated on, not trained on


def test_read_file_detects_the_format_and_names_each_row(tmp_path):
    from sft.data.rows import read_file

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT) + "\n\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    data = read_file(str(path))
    assert (data.format, len(data)) == ("chat", 2)
    good, bad = data.rows()
    assert (good.where, good.example, good.reason) == (f"{path}:1", CHAT, None)
    assert (bad.where, bad.example) == (f"{path}:3", None)
    assert bad.reason.startswith("message 1 has unknown role 'bot'")


def test_dataset_num_proc_workers_give_the_same_rows_counts_and_errors(tmp_path, tiny_model):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(60)]
    rows[41] = {"messages": [{"role": "user", "content": "hi"}]}
    write_jsonl(tmp_path / "d.jsonl", rows)
    one = prepared(tmp_path, tiny_model, strict=False, dataset_name="d.jsonl", test_split_size=6)
    two = prepared(tmp_path, tiny_model, strict=False, dataset_name="d.jsonl", test_split_size=6, dataset_num_proc=2)
    assert list(two.train["input_ids"]) == list(one.train["input_ids"])
    assert list(two.eval["labels"]) == list(one.eval["labels"])
    assert two.stats == one.stats and two.problems == one.problems
    assert one.problems[0].startswith(f"{tmp_path / 'd.jsonl'}:42: the conversation ends on a user turn")
