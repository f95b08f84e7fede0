"""Split slices of local files (`dataset_train_split: train[:20%]`, a `datasets:` entry's `split: train[2:5]`), in
datasets' own syntax: the rows named are read, each still naming its file and line; a slice that cannot be read
stops in one line."""

import json

from sft.data.prepare import read_mix_split
from sft.recipe.load import load_recipe
from tests.conftest import run_cli, write_recipe


def chat_line(word: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"  Uppercase: {word}\n"},
                                    {"role": "assistant", "content": word.upper()}]}, ensure_ascii=False) + "\n"


WORDS = ["zéro", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def trained(recipe_path) -> list[tuple[str, str]]:
    split = read_mix_split(load_recipe(str(recipe_path))).split
    assert split.eval is None
    return [(json.loads(r["example"])["messages"][1]["content"], r["where"]) for r in split.train]


def test_a_percent_slice_of_a_local_file_trains_on_those_rows_only(tiny_model, tmp_path):
    # A blank line in the file: rows keep the line they are on.
    (tmp_path / "train.jsonl").write_text("".join(chat_line(w) + ("\n" if w == "one" else "") for w in WORDS))
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                          dataset_train_split="train[:20%]")
    assert trained(recipe) == [("ZÉRO", f"{tmp_path}/train.jsonl:1"), ("ONE", f"{tmp_path}/train.jsonl:2")]
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                          dataset_train_split="train[-2:]")
    assert trained(recipe) == [("EIGHT", f"{tmp_path}/train.jsonl:10"), ("NINE", f"{tmp_path}/train.jsonl:11")]


def test_a_slice_of_a_folder_spans_its_files_in_order(tiny_model, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(chat_line(w) for w in WORDS[:4]))
    (folder / "b.jsonl").write_text("".join(chat_line(w) for w in WORDS[4:]))
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model),
                          datasets=[{"path": "data", "split": "train[3:5]"}])
    assert trained(recipe) == [("THREE", f"{folder}/a.jsonl:4"), ("FOUR", f"{folder}/b.jsonl:1")]


def test_a_slice_local_files_do_not_have_stops_in_one_line(tiny_model, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(chat_line(w) for w in WORDS))
    write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                 dataset_train_split="test[:10%]")
    proc = run_cli("check", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: train.jsonl: split 'test[:10%]' cannot be read from local files (Unknown split \"test\". Should be "
        "one of ['train'].): their rows are the split train; slice it as train[:20%], train[:1000] or train[100:200]"]


def test_a_slice_of_a_streamed_dataset_stops_in_one_line(tiny_model, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(chat_line(w) for w in WORDS))
    write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                 dataset_train_split="train[:20%]", streaming=True, max_steps=2, output_dir="out")
    proc = run_cli("train", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: train.jsonl: split train[:20%]: a streamed dataset cannot be sliced; "
                                        "remove the slice or set streaming: false"]
    assert not (tmp_path / "out").exists()
