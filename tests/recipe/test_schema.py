"""The recipe keys read from the installed TRL's and transformers' source (sft/recipe/schema.py): the same keys,
sections and types as the imported dataclasses, and a typo or a bad value reported before TRL or torch is imported."""

import json
import subprocess
import sys
import typing

import pytest

from sft.recipe import schema
from sft.recipe.fields import known_fields
from tests.conftest import REPO


def _has_opaque(tp) -> bool:
    return isinstance(tp, schema._Opaque) or any(_has_opaque(a) for a in typing.get_args(tp))


def test_keys_sections_and_types_match_the_imported_dataclasses(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path))
    schema._raw_fields.cache_clear()
    fast, real = schema.fast_fields(), known_fields()
    assert set(fast) == set(real)
    for key, places in real.items():
        assert [s for s, _, _ in fast[key]] == [s for s, _, _ in places], key
        fast_type, real_type = fast[key][0][2], places[0][2]
        if not _has_opaque(fast_type):  # an enum or torch type is a name alone without the import
            assert fast_type == real_type, key
        fast_field, real_field = fast[key][0][1], places[0][1]
        assert fast_field.metadata.get("help") == real_field.metadata.get("help"), key
    eval_strategy = typing.get_args(fast["eval_strategy"][0][2])  # IntervalStrategy | str
    assert [t.__name__ for t in eval_strategy] == ["IntervalStrategy", "str"]
    assert fast["learning_rate"][0][1].default == real["learning_rate"][0][1].default == 2e-05
    # Cached on disk, keyed by the packages' versions, and read back the same.
    (cached,) = tmp_path.glob("recipe-keys-trl*-transformers*.json")
    assert json.loads(cached.read_text())["training"]["learning_rate"]["type"] == "float"
    schema._raw_fields.cache_clear()
    assert set(schema.fast_fields()) == set(real)


def test_a_file_moved_by_another_version_falls_back_to_the_import(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(schema.CLASS_FILES, "model", ("trl", "trainer/moved_away.py", "ModelConfig"))
    schema._raw_fields.cache_clear()
    try:
        assert schema.fast_fields() is None
    finally:
        schema._raw_fields.cache_clear()


@pytest.mark.parametrize("line, overrides, message", [
    ("learning_rat: 1.0e-4", [], ":3: unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    ("seed: -1", [], ":3: seed must be a whole number from 0 to 4294967295"),
    ("packing: maybe", [], ":3: 'packing' must be true or false, got 'maybe'"),
    ("seed: 1", ["--max_step", "3"], "command line: unknown key --max_step; did you mean 'max_steps'?"),
])
def test_typo_or_bad_value_is_reported_before_trl_or_torch_is_imported(tmp_path, line, overrides, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: m\noutput_dir: out\n{line}\n")
    code = ("import sys\nfrom sft.errors import UserError\nfrom sft.recipe.load import load_recipe\n"
            f"try:\n    load_recipe({str(recipe)!r}, {overrides!r})\nexcept UserError as err:\n    print(err)\n"
            "print(sorted(m for m in ('trl', 'torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error, imported = proc.stdout.strip().splitlines()
    assert message in error
    assert imported == "[]"


def test_help_all_is_read_without_importing_trl_or_torch():
    code = ("import sys\nfrom sft.recipe.help import every_key_text\ntext = every_key_text()\n"
            "print(sorted(m for m in ('trl', 'torch', 'transformers') if m in sys.modules))\n"
            "print([line for line in text.splitlines() if line.startswith('  eval_strategy (')][0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported, line = proc.stdout.splitlines()
    assert imported == "[]"
    assert line == "  eval_strategy (IntervalStrategy | str = 'no'): When to run evaluation."


@pytest.mark.parametrize("command", [["train"], ["check"], ["preview"], ["launch", "--dry-run"],
                                     ["plan", "--gpus", "1", "--gpu-memory", "80"]])
def test_commands_report_a_typo_before_importing_trl_or_torch(tmp_path, command):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\noutput_dir: out\nlearning_rat: 1.0e-4\n")
    argv = [command[0], str(recipe), *command[1:]]
    code = (f"import sys\nsys.argv = ['sft', *{argv!r}]\nfrom sft.cli import main\ntry:\n    main()\n"
            "except SystemExit as exit:\n    print('exit', exit.code)\n"
            "print(sorted(m for m in ('trl', 'torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.stderr == f"error: {recipe}:3: unknown key 'learning_rat'; did you mean 'learning_rate'?\n"
    assert proc.stdout.splitlines() == ["exit 2", "[]"]
