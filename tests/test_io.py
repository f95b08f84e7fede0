"""sft.io: one percentile definition for every command, files written whole or not at all, JSONL."""

import gc
import json
import re

import pytest

from sft.errors import UserError
from sft.io import frozen_heap, percentiles, read_jsonl, recipe_yaml, replacing, write_atomic, write_jsonl
from tests.conftest import run_cli, write_recipe


def test_percentiles_are_nearest_rank():
    assert percentiles(range(1, 101)) == {"min": 1, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100,
                                          "mean": 50.5}
    # Ten values: p50 is the 5th smallest (half the values at or below it), not the 6th.
    assert percentiles([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])["p50"] == 5
    assert percentiles([7]) == {"min": 7, "p50": 7, "p90": 7, "p95": 7, "p99": 7, "max": 7, "mean": 7.0}
    assert percentiles([]) == {}


@pytest.mark.slow  # two CLI runs with a model: ~25 s here
def test_check_and_data_stats_give_the_same_percentiles(tmp_path, tiny_model):
    """`sft check` (lengths of the tokenized rows) and `sft data stats` (lengths of the rendered rows) print the
    same p50 and p90 for the same ten conversations of ten different lengths."""
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * (3 * i + 1)}]}
            for i in range(10)]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"), max_length=200)
    env = {"SFT_CACHE_DIR": str(tmp_path / "cache")}
    check = run_cli("check", recipe, env=env, check=True).stdout
    checked = re.search(r"tokens per example: p50 (\d+), p90 (\d+), p99 (\d+), max (\d+)", check).groups()
    stats = json.loads(run_cli("data", "stats", data, "--tokenizer", tiny_model, "-o", tmp_path / "s", "--json",
                               env=env, check=True).stdout)[str(data)]
    assert [int(v) for v in checked] == [stats["p50"], stats["p90"], stats["p99"], stats["max"]]
    answers = [3 * i + 1 for i in range(10)]  # characters, one token each: the rest is the same for every row
    lengths = [(stats["tokens"] - sum(answers)) // 10 + n for n in answers]
    assert (stats["min"], stats["p50"], stats["max"]) == (lengths[0], lengths[4], lengths[9])  # p50: 5th of 10


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    write_atomic(target, "first\n")
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError):
        with replacing(target) as handle:
            handle.write("half of the se")
            raise RuntimeError("disk full")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]  # no temporary file left
    write_atomic(target, "#!/bin/sh\n", mode=0o755)
    assert target.read_text() == "#!/bin/sh\n" and target.stat().st_mode & 0o777 == 0o755


def test_jsonl_round_trip_and_a_broken_line_named(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [{"text": "é ✓"}, {"n": 1}])
    assert path.read_text(encoding="utf-8") == '{"text": "é ✓"}\n{"n": 1}\n'
    assert read_jsonl(path) == [{"text": "é ✓"}, {"n": 1}]
    path.write_text('{"n": 1}\n\n{"n": \n')
    with pytest.raises(UserError, match=re.escape(f"{path}:3: not valid JSON")):
        read_jsonl(path)


def test_frozen_heap_leaves_existing_objects_out_of_collection_until_it_ends():
    existing = [object() for _ in range(10)]
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() >= before + len(existing)  # forked workers' collections skip them
    assert gc.get_freeze_count() == 0


def test_recipes_are_written_a_key_per_line_with_short_lists_inline():
    import yaml

    assert recipe_yaml({"learning_rate": 2.0e-05, "model_name_or_path": "Qwen/Qwen3-0.6B"}) == (
        "learning_rate: 2.0e-05\nmodel_name_or_path: Qwen/Qwen3-0.6B\n")
    nested = {"lora_target_modules": ["q_proj", "v_proj"], "model_init_kwargs": {"torch_dtype": "bfloat16"},
              "note": "日本語"}
    assert recipe_yaml(nested, allow_unicode=True) == (
        "lora_target_modules: [q_proj, v_proj]\nmodel_init_kwargs: {torch_dtype: bfloat16}\nnote: 日本語\n")
    assert yaml.safe_load(recipe_yaml(nested)) == nested
