"""Streaming datasets (`dataset_streaming: true`, or `streaming: true` under `datasets:`): trained with max_steps,
rows checked and masked as they stream with the same functions as without streaming, bad rows reported as met."""

import json

import pytest

from sft.data.prepare import prepare_data, recipe_tokenizer
from sft.recipe.load import load_recipe
from tests.conftest import run_cli, run_cli_in_process, write_recipe


def chat(i: int) -> dict:
    word = "".join("abcdefgh"[(i * 7 + k * 3) % 8] for k in range(3 + i % 4))
    return {"messages": [{"role": "user", "content": f"Uppercase: {word}"}, {"role": "assistant",
                                                                            "content": word.upper()}]}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def data_file(tmp_path, n=40, bad=None, name="train.jsonl"):
    """n chat rows as JSON Lines; bad maps a 1-based line number to the text that replaces that line."""
    lines = [json.dumps(chat(i)) for i in range(n)]
    for number, text in (bad or {}).items():
        lines[number - 1] = text
    return write_lines(tmp_path / name, lines)


def streaming_recipe(tmp_path, tiny_model, dataset, **values):
    values = {"model_name_or_path": str(tiny_model), "dataset_name": str(dataset), "dataset_streaming": True,
              "output_dir": str(tmp_path / "out"), "max_length": 64, "max_steps": 4, "per_device_train_batch_size": 4,
              "learning_rate": 1.0e-2, "report_to": "none", "data_cache": False, "seed": 0, **values}
    return write_recipe(tmp_path / "recipe.yaml", **{k: v for k, v in values.items() if v is not None})


BAD_ROLE = json.dumps({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "HI"}]})
BAD_ROLE_REASON = "message 1 has unknown role 'bot'; expected one of system, user, assistant, tool, developer, " \
                  "ipython, function"


def test_streamed_run_trains_and_its_first_batch_is_the_non_streaming_path_s(tmp_path, tiny_model):
    from safetensors.torch import load_file

    from sft.run import checked_trainer

    dataset = data_file(tmp_path)
    recipe_path = streaming_recipe(tmp_path, tiny_model, dataset)
    # What the trainer's first batch holds: the streamed run's own dataloader (no shuffle for a stream) ...
    recipe = load_recipe(str(recipe_path), ["--output_dir", str(tmp_path / "in-process")])  # this process locks it
    trainer, _, streamed, _, _ = checked_trainer(recipe)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.end()
    # ... equals the same four rows through the non-streaming path, token for token and mask for mask.
    plain = load_recipe(str(recipe_path), ["--dataset_streaming", "false", "--output_dir", str(tmp_path / "plain")])
    rows = prepare_data(plain, recipe_tokenizer(plain)).train.select(range(4))
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i][:n].tolist() == row["input_ids"]
        assert batch["labels"][i][:n].tolist() == row["labels"]
        assert (batch["labels"][i][n:] == -100).all()
    assert streamed.train.column_names == ["input_ids", "labels"]

    # The real CLI run trains max_steps steps and saves the model, changed by training.
    result = run_cli("train", recipe_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sft: done: 4 steps" in result.stderr
    assert "sft: data: streamed 40 rows: 40 examples, 0 bad rows skipped" in result.stderr
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert any(not after[name].equal(before[name]) for name in before)


def test_bad_rows_are_reported_as_they_are_met_and_counted(tmp_path, tiny_model):
    # 40 rows, 16 steps of 4: the stream is read a second time, and each bad row is still reported once.
    dataset = data_file(tmp_path, bad={7: BAD_ROLE, 21: "{not json"})
    recipe = streaming_recipe(tmp_path, tiny_model, dataset, skip_bad_rows=True, max_steps=16)
    result = run_cli("train", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    reported = [line for line in result.stderr.splitlines() if line.startswith("sft: bad row skipped")]
    assert reported == [
        f"sft: bad row skipped (1 so far): {dataset}:7: {BAD_ROLE_REASON}",
        f"sft: bad row skipped (2 so far): {dataset}:21: not valid JSON: Expecting property name enclosed in double "
        "quotes (column 2)",
    ]
    assert "sft: done: 16 steps" in result.stderr
    assert ("sft: data: streamed 40 rows: 38 examples, 2 bad rows skipped, 0 dropped (every trained token past "
            "max_length), 0 truncated") in result.stderr


def test_without_skip_bad_rows_a_bad_row_stops_the_run_with_the_non_streaming_line(tmp_path, tiny_model,
                                                                                  existing_output):
    dataset = data_file(tmp_path, bad={7: BAD_ROLE})
    expected = f"error: {dataset}:7: {BAD_ROLE_REASON}; fix the data or set skip_bad_rows: true to skip and count " \
               "such rows"
    plain = run_cli("train", streaming_recipe(tmp_path, tiny_model, dataset, dataset_streaming=False,
                                              output_dir=str(existing_output)))
    assert plain.returncode == 2 and plain.stderr.strip().splitlines()[-1] == expected
    # Among the rows checked before training: nothing is written.
    streamed = run_cli("train", streaming_recipe(tmp_path, tiny_model, dataset, output_dir=str(existing_output)))
    assert streamed.returncode == 2 and streamed.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in streamed.stderr
    assert sorted(p.name for p in existing_output.iterdir()) == ["precious.txt"]


@pytest.mark.slow
def test_a_bad_row_past_the_checked_head_stops_training_when_met(tmp_path, tiny_model):
    dataset = data_file(tmp_path, n=1100, bad={1050: BAD_ROLE})
    result = run_cli("train", streaming_recipe(tmp_path, tiny_model, dataset, max_steps=40,
                                               per_device_train_batch_size=64))
    assert result.returncode == 2
    expected = f"error: {dataset}:1050: {BAD_ROLE_REASON}; fix the data or set skip_bad_rows: true to skip and " \
               "count such rows"
    # The line ends the progress bar's line it interrupts (tqdm leaves its line open), and is said once.
    assert result.stderr.count("error: ") == 1
    assert [line for line in result.stderr.splitlines() if line.endswith(expected)]
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("values, line", [
    ({"max_steps": None}, "max_steps: a streamed dataset has no length to count epochs in; set max_steps (e.g. "
                          "max_steps: 1000) or streaming: false"),
    ({"test_split_size": 0.1}, "test_split_size: a streamed dataset cannot be split (its length is unknown); remove "
                               "test_split_size or set streaming: false"),
    ({"dataloader_num_workers": 2}, "dataloader_num_workers: a streamed dataset is checked and its bad rows counted "
                                    "in the training process; set dataloader_num_workers: 0 or streaming: false"),
    ({"eval_strategy": "steps", "eval_steps": 2}, "eval_strategy is steps but a streamed dataset has no eval split; "
                                                  "set eval_strategy: no or streaming: false"),
])
def test_what_a_stream_cannot_do_is_refused_in_one_line(tmp_path, tiny_model, existing_output, values, line):
    recipe = streaming_recipe(tmp_path, tiny_model, data_file(tmp_path), output_dir=str(existing_output), **values)
    result = run_cli_in_process("train", recipe)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {recipe}: {line}"]
    assert sorted(p.name for p in existing_output.iterdir()) == ["precious.txt"]


def test_check_reads_the_first_rows_and_preview_shows_them_as_without_streaming(tmp_path, tiny_model):
    from click.testing import CliRunner

    from sft.cli import cli

    dataset = data_file(tmp_path, n=1200, bad={3: BAD_ROLE, 1100: BAD_ROLE})
    recipe = streaming_recipe(tmp_path, tiny_model, dataset, skip_bad_rows=True)
    result = CliRunner().invoke(cli, ["check", str(recipe)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"source 1: {dataset}: chat, 1,000 rows, 999 training examples, 1 bad rows" in out
    assert "note: streaming: the first 1,000 rows are checked before training" in out
    assert "tokenized data: not cached (streamed: masked as training reads it)" in out
    without_max_steps = CliRunner().invoke(cli, ["check", str(recipe), "--max_steps", "-1"])
    assert without_max_steps.exit_code == 2
    assert "max_steps: a streamed dataset has no length" in without_max_steps.stderr

    shown = CliRunner().invoke(cli, ["preview", str(recipe), "-n", "3", "--json"])
    plain = CliRunner().invoke(cli, ["preview", str(recipe), "-n", "4", "--json", "--dataset_streaming", "false"])
    streamed_rows = [json.loads(line) for line in shown.stdout.splitlines()]
    plain_rows = [json.loads(line) for line in plain.stdout.splitlines()]
    assert [r["where"] for r in streamed_rows] == [f"{dataset}:1", f"{dataset}:2"]  # line 3 is bad
    assert streamed_rows == plain_rows[:2]


def test_mixtures_interleave_and_parquet_and_csv_stream(tmp_path, tiny_model):
    from datasets import Dataset

    first = data_file(tmp_path, n=3, name="a.jsonl")
    rows = [{"prompt": f"p{i} ", "completion": f"c{i}"} for i in range(4)]
    Dataset.from_list(rows).to_parquet(tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text\n" + "".join(f"line {i}\n" for i in range(2)))
    recipe = write_recipe(tmp_path / "mix.yaml", model_name_or_path=str(tiny_model), output_dir=str(tmp_path / "out"),
                          streaming=True, max_steps=2, datasets=[
                              {"path": str(first)}, {"path": "parquet", "data_files": str(tmp_path / "b.parquet")},
                              {"path": str(tmp_path / "c.csv")}])
    loaded = load_recipe(str(recipe))
    data = prepare_data(loaded, recipe_tokenizer(loaded))
    # Alternating until every row was read once, as the concatenated non-streaming mixture holds each row once.
    assert [row["where"] for row in data.train_full] == [
        f"{first}:1", f"{tmp_path / 'b.parquet'} row 1", f"{tmp_path / 'c.csv'} row 1",
        f"{first}:2", f"{tmp_path / 'b.parquet'} row 2", f"{tmp_path / 'c.csv'} row 2",
        f"{first}:3", f"{tmp_path / 'b.parquet'} row 3", f"{tmp_path / 'b.parquet'} row 4"]
    assert [s["format"] for s in data.stats["sources"]] == ["chat", "prompt_completion", "text"]
    assert len(list(data.train)) == 9  # the stream itself: every row, masked


def test_a_hub_dataset_streams_from_a_loopback_hub(hub, tmp_path, tiny_model):
    from tests.support.hub_server import Repo

    lines = [json.dumps(chat(i)) for i in range(12)]
    lines[2] = BAD_ROLE
    repo = Repo("someone/chat-data", "dataset")
    repo.commit("main", {"data/train.jsonl": "".join(line + "\n" for line in lines).encode()}, [])
    hub.state.repos[("dataset", "someone/chat-data")] = repo
    recipe = streaming_recipe(tmp_path, tiny_model, "someone/chat-data", skip_bad_rows=True, max_steps=2)
    result = run_cli("train", recipe, env={**hub.env, "HF_DATASETS_OFFLINE": "0",
                                           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sft: bad row skipped (1 so far): someone/chat-data[train] row 3: {BAD_ROLE_REASON}" in result.stderr
    assert "sft: done: 2 steps" in result.stderr and "2 bad rows" not in result.stderr
    assert not (tmp_path / "datasets-cache").exists() or not list((tmp_path / "datasets-cache").rglob("*.arrow"))


def test_over_long_rows_are_truncated_and_dropped_as_without_streaming(tmp_path, tiny_model):
    # Long prompts: some answers are cut by max_length (truncated), some lie wholly past it (dropped).
    lines = [json.dumps({"messages": [{"role": "user", "content": "x" * (10 * i)},
                                      {"role": "assistant", "content": "YES"}]}) for i in range(12)]
    dataset = write_lines(tmp_path / "long.jsonl", lines)
    recipe_path = streaming_recipe(tmp_path, tiny_model, dataset, max_length=60, max_dropped_fraction=0.9)
    streamed = load_recipe(str(recipe_path))
    data = prepare_data(streamed, recipe_tokenizer(streamed))
    examples = list(data.train)
    plain = load_recipe(str(recipe_path), ["--dataset_streaming", "false"])
    expected = prepare_data(plain, recipe_tokenizer(plain))
    assert expected.stats["truncated"] > 0 and expected.stats["dropped_truncated"] > 0
    assert (data.counts.truncated, data.counts.dropped) == (expected.stats["truncated"],
                                                            expected.stats["dropped_truncated"])
    assert [(e["input_ids"], e["labels"]) for e in examples] == [(r["input_ids"], r["labels"]) for r in expected.train]
    assert all(len(e["input_ids"]) <= 60 for e in examples)
