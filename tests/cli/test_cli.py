"""The command line: instant help, and bad input as one clear line with exit code 2 that leaves output_dir alone."""

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_cli, run_cli_in_process, write_recipe
from tests.support.assertions import assert_one_line_error, assert_untouched


def test_help_is_instant_and_imports_no_torch():
    """Instant means a small fraction of importing torch, timed in the same process right after: a ratio holds
    on a loaded machine where a fixed number of seconds would flake."""
    code = (
        "import sys, time; t = time.perf_counter(); from sft.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "help_s, torch_loaded = time.perf_counter() - t, 'torch' in sys.modules\n"
        "t = time.perf_counter(); import torch\n"
        "print(help_s, time.perf_counter() - t, torch_loaded, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    help_seconds, torch_seconds, torch_loaded = proc.stderr.split()[-3:]
    assert torch_loaded == "False"
    assert float(help_seconds) < 0.25 * float(torch_seconds), (help_seconds, torch_seconds)
    assert "train" in proc.stdout and "tiny-model" in proc.stdout


def test_every_subcommand_help_imports_no_torch():
    from sft.cli import cli

    names = cli.list_commands(None)
    code = (
        "import sys\nfrom sft.cli import main\n"
        f"for name in {names!r}:\n"
        "    try:\n        main([name, '--help'])\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def wall_seconds(*command) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True)
    return time.perf_counter() - started, proc


def test_run_py_help_imports_no_torch():
    """Timed against a process that only imports torch, started the same way (a ratio, not seconds: see above)."""
    help_seconds, proc = wall_seconds(REPO / "sft" / "run.py", "--help")
    torch_seconds, _ = wall_seconds("-c", "import torch")
    assert proc.returncode == 0 and "sft train RECIPE" in proc.stdout
    assert help_seconds < 0.5 * torch_seconds, (help_seconds, torch_seconds)


def good_recipe(tmp_path, tiny_model, out, **changes):
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    values = dict(model_name_or_path=str(tiny_model), dataset_name=str(data), output_dir=str(out), max_steps=1,
                  report_to="none")
    values.update(changes)
    return write_recipe(tmp_path / "recipe.yaml", **{k: v for k, v in values.items() if v is not None})


def test_unknown_key(tmp_path, tiny_model, existing_output):
    recipe = good_recipe(tmp_path, tiny_model, existing_output)
    recipe.write_text(recipe.read_text() + "lerning_rate: 0.1\n")
    line = len(recipe.read_text().splitlines())
    proc = run_cli_in_process("train", recipe)
    assert_one_line_error(proc, f"{recipe}:{line}:", "unknown key 'lerning_rate'", "did you mean 'learning_rate'")
    assert_untouched(existing_output)


def test_wrong_type(tmp_path, tiny_model, existing_output):
    recipe = good_recipe(tmp_path, tiny_model, existing_output, max_steps="ten")
    proc = run_cli("run.py", recipe)
    assert_one_line_error(proc, f"{recipe}:", "'max_steps' must be an integer, got 'ten'")
    assert_untouched(existing_output)


@pytest.mark.parametrize(
    "setting, data_text, expected",
    [
        ({"model_name_or_path": "{tmp}/nope"}, None, "model_name_or_path {tmp}/nope does not exist"),
        ({"dataset_name": "{tmp}/missing.jsonl"}, None, "{tmp}/missing.jsonl: data file not found"),
        ({}, '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
         "{tmp}/data.jsonl:2: not valid JSON"),
        ({}, "", "{tmp}/data.jsonl: the dataset is empty"),
    ],
    ids=["missing-model", "missing-data-file", "malformed-jsonl-line", "empty-dataset"],
)
def test_bad_model_or_data(tmp_path, tiny_model, existing_output, setting, data_text, expected):
    if data_text is not None:
        (tmp_path / "data.jsonl").write_text(data_text)
    changes = {key: value.format(tmp=tmp_path) for key, value in setting.items()}
    recipe = good_recipe(tmp_path, tiny_model, existing_output, **changes)
    proc = run_cli_in_process("train", recipe)
    assert_one_line_error(proc, expected.format(tmp=tmp_path))
    assert_untouched(existing_output)


def test_recipe_that_is_not_a_mapping(tmp_path, existing_output):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("just a sentence\n")
    proc = run_cli_in_process("train", recipe)
    assert_one_line_error(proc, f"{recipe}: a recipe must be a mapping", "not a str")
    assert_untouched(existing_output)


def test_debug_flag_shows_the_traceback(tmp_path, existing_output):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("[1, 2]\n")
    proc = run_cli("train", recipe, "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "a recipe must be a mapping" in proc.stderr


def test_missing_recipe_file(tmp_path):
    proc = run_cli_in_process("train", tmp_path / "nope.yaml")
    assert_one_line_error(proc, f"{tmp_path / 'nope.yaml'}: recipe file not found")
