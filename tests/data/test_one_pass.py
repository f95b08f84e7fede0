"""One source that nothing mixes or splits is normalised by the tokenizing pass itself (one pass over the data):
it must give what the two passes give (a mixture entry with weight 1 keeps every row and takes two passes)."""

import json

from sft.data.prepare import prepare_data, read_mix_split, recipe_tokenizer
from sft.recipe.load import load_recipe
from tests.conftest import write_recipe

USER, ANSWER = "  Wie geht's?\u00a0 日本語 😀\n\n", "\tGut, danke!  \u2003\n"


def chat(user, answer, **extra):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}


def shards(folder):
    """Two JSON Lines files of the same columns: odd whitespace and unicode, blank lines, bad rows, a row the
    template cannot mask, and columns named as sft's own (source, where, example) that must be left alone."""
    folder.mkdir()
    first = [chat(USER + str(i), ANSWER * (i % 3 + 1), source="web", where="x", example="y") for i in range(9)]
    first[3] = {"messages": [{"role": "user", "content": "no answer"}], "source": "web", "where": "x", "example": "y"}
    first[5] = chat("an empty answer", " \n ", source="web", where="x", example="y")
    second = [chat(f"q{i} ", f" a{i}", source="forum", where="z", example="w") for i in range(7)]
    second[2] = {"messages": [{"role": "robot", "content": "beep"}], "source": "forum", "where": "z", "example": "w"}
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in first[:4]) + "\n\n\n"
                                    + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in first[4:]))
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n\n" for r in second))
    return folder


def recipe_of(tmp_path, model, name, **values):
    values = {"model_name_or_path": str(model), "output_dir": str(tmp_path / "out"), "skip_bad_rows": True,
              "data_cache": False, **values}
    return load_recipe(str(write_recipe(tmp_path / name, **values)))


def columns(data):
    full = data.train_full
    return {name: full[name] for name in ("input_ids", "labels", "where", "source", "length", "trained")}


def test_one_pass_gives_what_two_passes_give(tmp_path, tiny_bpe_model):
    data = shards(tmp_path / "data")
    one_pass = recipe_of(tmp_path, tiny_bpe_model, "one.yaml", dataset_name=str(data), dataset_num_proc=2)
    two_passes = recipe_of(tmp_path, tiny_bpe_model, "two.yaml", dataset_num_proc=2,
                           dataset_mixture={"datasets": [{"id": str(data), "weight": 1.0}]})
    assert read_mix_split(one_pass, defer_normalising=True).parts[0].reader is not None
    assert read_mix_split(two_passes, defer_normalising=True).parts[0].reader is None
    tokenizer = recipe_tokenizer(one_pass)
    ours, theirs = prepare_data(one_pass, tokenizer), prepare_data(two_passes, tokenizer)

    assert columns(ours) == columns(theirs)
    assert ours.problems == theirs.problems == []
    assert {k: v for k, v in ours.stats.items() if k != "sources"} == {
        k: v for k, v in theirs.stats.items() if k != "sources"}
    assert ours.stats["sources"][0]["name"] != theirs.stats["sources"][0]["name"]
    assert [{k: v for k, v in s.items() if k != "name"} for s in ours.stats["sources"]] == [
        {"format": "chat", "rows": 16, "bad": 2, "examples": 13}]
    assert ours.stats["skipped_bad"] == 3  # two rows that fail normalising, one the template cannot mask
    first, second = str(data / "a.jsonl"), str(data / "b.jsonl")
    assert columns(ours)["where"] == [f"{first}:{n}" for n in (1, 2, 3, 7, 9, 10, 11)] + [
        f"{second}:{n}" for n in (1, 3, 7, 9, 11, 13)]
    assert set(columns(ours)["source"]) == {0}


def test_bad_rows_are_named_and_refused_as_with_two_passes(tmp_path, tiny_bpe_model):
    data = shards(tmp_path / "data")
    one_pass = recipe_of(tmp_path, tiny_bpe_model, "one.yaml", dataset_name=str(data), skip_bad_rows=False)
    two_passes = recipe_of(tmp_path, tiny_bpe_model, "two.yaml", skip_bad_rows=False,
                           dataset_mixture={"datasets": [{"id": str(data), "weight": 1.0}]})
    tokenizer = recipe_tokenizer(one_pass)
    ours = prepare_data(one_pass, tokenizer, strict=False)
    theirs = prepare_data(two_passes, tokenizer, strict=False)
    assert ours.problems == theirs.problems
    assert ours.problems[0] == (
        f"{data / 'a.jsonl'}:8: message 2 (assistant) has empty content (1 more bad rows, e.g. "
        f"{data / 'b.jsonl'}:5: message 1 has unknown role 'robot'; expected one of system, user, assistant, tool, "
        "developer, ipython, function); fix the data or set skip_bad_rows: true to skip and count such rows")
    assert ours.problems[1].startswith(f"{data / 'a.jsonl'}:4: the conversation ends on a user turn")


def test_every_row_bad_says_what_the_data_looks_like(tmp_path, tiny_bpe_model):
    data = shards(tmp_path / "data")
    recipe = recipe_of(tmp_path, tiny_bpe_model, "one.yaml", dataset_name=str(data), dataset_format="text")
    try:
        prepare_data(recipe, recipe_tokenizer(recipe))
    except Exception as err:
        message = str(err)
    assert message == (f"{data / 'a.jsonl'}:1: 'text' is missing or empty; none of the 16 rows is text data; the data "
                       "looks like chat (columns messages, source, where, example): remove dataset_format or set it "
                       "to chat")


def test_cached_rows_are_not_reused_when_only_their_line_numbers_moved(tmp_path, tiny_bpe_model):
    """Blank lines change no row but every line number after them: the tokenized cache must not give old ones."""
    path = tmp_path / "d.jsonl"
    rows = [chat("q", "a"), {"messages": [{"role": "user", "content": "unanswered"}]}, chat("r", "b")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    values = dict(dataset_name=str(path), data_cache=True, skip_bad_rows=True)
    recipe = recipe_of(tmp_path, tiny_bpe_model, "r.yaml", **values)
    tokenizer = recipe_tokenizer(recipe)
    before = prepare_data(recipe, tokenizer)
    path.write_text("\n\n" + path.read_text())
    after = prepare_data(recipe_of(tmp_path, tiny_bpe_model, "r.yaml", **values), tokenizer)
    again = prepare_data(recipe_of(tmp_path, tiny_bpe_model, "r.yaml", **values), tokenizer)
    assert before.train_full["where"] == [f"{path}:1", f"{path}:3"]
    assert after.train_full["where"] == [f"{path}:3", f"{path}:5"]
    assert (before.stats["cache"], after.stats["cache"], again.stats["cache"]) == ("miss", "miss", "hit")
