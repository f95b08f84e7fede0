"""Caches are keyed by what produced their contents: a data file by its bytes (not its path and modification
time), tokenized data also by the code and templates that made its labels."""

import json
import os
import shutil
import subprocess
import sys

from tests.conftest import quickstart_rows, write_recipe


def test_a_file_edited_with_its_modification_time_kept_is_read_anew(tmp_path):
    from sft.data.sources import load_local_file

    data, edited = tmp_path / "train.jsonl", tmp_path / "edited.jsonl"
    data.write_text(json.dumps({"instruction": "Uppercase: cat", "output": "CAT"}) + "\n")
    edited.write_text(json.dumps({"instruction": "Uppercase: dog", "output": "DOG"}) + "\n")
    for path in (data, edited):
        os.utime(path, (1_600_000_000, 1_600_000_000))
    assert load_local_file(data).dataset[0]["output"] == "CAT"
    shutil.copy2(edited, data)  # `cp -p`: same size, same mtime, other bytes
    assert os.stat(data).st_mtime == 1_600_000_000
    assert load_local_file(data).dataset[0]["output"] == "DOG"


def test_a_change_to_the_mask_code_does_not_reuse_tokenized_data(tmp_path, tiny_model):
    """A copy of the package whose masking code changes between two checks of the same recipe."""
    import sft

    package = tmp_path / "code"
    shutil.copytree(os.path.dirname(sft.__file__), package / "sft", ignore=shutil.ignore_patterns("__pycache__"))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), output_dir=str(tmp_path / "out"),
                          dataset_name=str(quickstart_rows(tmp_path / "d.jsonl", 8)), max_length=64, report_to="none")
    env = {**os.environ, "PYTHONPATH": str(package), "SFT_CACHE_DIR": str(tmp_path / "cache")}

    def check():
        proc = subprocess.run([sys.executable, "-m", "sft.cli", "check", str(recipe)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return next(line for line in proc.stdout.splitlines() if line.startswith("tokenized data:"))

    first = check()
    assert "reused" not in first and check() == "tokenized data: reused from the cache"
    spans = package / "sft" / "masks" / "spans.py"
    spans.write_text(spans.read_text() + "\n# a change to how labels are made\n")
    assert check() == first
