"""Bad input against an output_dir that holds a finished run: exit 2, exactly one line on stderr naming the key,
file or line and what to change, and every file of the run, the base model and the data byte-identical after.

Plus what a bad input cannot show in that table: two runs into one output_dir, Ctrl-C during training, a disk
that fills up mid-run."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, quickstart_rows, run_cli, run_cli_in_process, write_recipe


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """root/model (a tiny base model), root/train.jsonl, root/recipe.yaml and root/run: a finished 2-step run with
    its final checkpoint."""
    from sft.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("finished")
    build_tiny_model(root / "model")
    quickstart_rows(root / "train.jsonl", 16)
    write_recipe(root / "recipe.yaml", model_name_or_path=str(root / "model"), dataset_name=str(root / "train.jsonl"),
                 output_dir=str(root / "run"), max_steps=2, save_steps=2, per_device_train_batch_size=4,
                 max_length=64, report_to="none", seed=0)
    run_cli("train", root / "recipe.yaml", check=True)
    assert (root / "run" / "checkpoint-2" / "sft-complete.json").is_file()
    return root


def tree_digest(root: Path) -> dict:
    """Every file under root (links not followed) -> sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr[-3000:]  # the only line
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "Traceback" not in line
    for fragment in fragments:
        assert fragment in line, line


def train_args(root, *overrides):
    return ["train", root / "recipe.yaml", *overrides]


def recipe_text(root, extra: str, name="edited.yaml", encoding_bytes: bytes | None = None) -> Path:
    """A copy of the run's recipe with `extra` appended, written next to the test's other inputs."""
    path = root / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes((root / "recipe.yaml").read_bytes() + extra.encode() + (encoding_bytes or b""))
    return path


def model_variant(root, name, change) -> Path:
    """A copy of the base model folder changed by change(folder)."""
    folder = root / "inputs" / name
    if not folder.exists():
        shutil.copytree(root / "model", folder)
        change(folder)
    return folder


def needs_own_code(folder):
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "configuration_mystery.MysteryConfig",
                            "AutoModelForCausalLM": "modeling_mystery.MysteryForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))


def unknown_model_type(folder):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mystery_lm"
    (folder / "config.json").write_text(json.dumps(config))


def pickled_weights_only(folder):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def data_variant(root, name, text: bytes) -> Path:
    path = root / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text)
    return path


# id -> (root -> sft arguments, fragments the one error line must contain; {root} is the run's folder)
CASES = {
    # Checked too late before: each failed mid-run after output_dir/recipe.yaml was rewritten.
    "negative-learning-rate": (lambda r: train_args(r, "--learning_rate", "-1e-4"),
                               ["command line: learning_rate must be 0 or more, got -0.0001"]),
    "batch-size-0": (lambda r: train_args(r, "--per_device_train_batch_size", "0"),
                     ["per_device_train_batch_size must be a whole number greater than 0, got 0"]),
    "batch-size-negative": (lambda r: train_args(r, "--per_device_train_batch_size", "-4"),
                            ["per_device_train_batch_size must be a whole number greater than 0, got -4"]),
    "max-length-0": (lambda r: train_args(r, "--max_length", "0"),
                     ["max_length must be a whole number greater than 0"]),
    "grad-accumulation-0": (lambda r: train_args(r, "--gradient_accumulation_steps", "0"),
                            ["gradient_accumulation_steps must be a whole number greater than 0"]),
    "lora-r-0": (lambda r: train_args(r, "--method", "lora", "--lora_r", "0"),
                 ["lora_r must be a whole number greater than 0, got 0"]),
    "lora-dropout-1": (lambda r: train_args(r, "--method", "lora", "--lora_dropout", "1.5"),
                       ["lora_dropout must be at least 0 and below 1"]),
    "adam-beta-1": (lambda r: train_args(r, "--adam_beta2", "1.0"), ["adam_beta2 must be at least 0 and below 1"]),
    "recipe-line-named": (lambda r: [
        "train", recipe_text(r, "gradient_accumulation_steps: 0\n")],
        ["inputs/edited.yaml:10: gradient_accumulation_steps must be"]),
    # Accepted silently before.
    "duplicate-key": (lambda r: ["train", recipe_text(r, "learning_rate: 1.0e-4\nlearning_rate: 5.0\n")],
                      ["edited.yaml:11: key 'learning_rate' is given twice (lines 10 and 11)"]),
    "bf16-and-fp16": (lambda r: train_args(r, "--bf16", "true", "--fp16", "true"), ["bf16 and fp16 are both true"]),
    "lora-key-without-peft": (lambda r: train_args(r, "--lora_alpha", "64"),
                              ["lora_alpha set but method is full", "method: lora"]),
    "save-steps-0": (lambda r: train_args(r, "--save_steps", "0"),
                     ["save_steps must be greater than 0 with save_strategy steps, got 0", 'save_strategy: "no"']),
    "finished-run": (lambda r: train_args(r), ["{root}/run: this run is finished (checkpoint-2 reached max_steps 2)",
                                               "nothing was changed", "--fresh"]),
    "finished-run-lower-max-steps": (lambda r: train_args(r, "--max_steps", "1"), ["this run is finished"]),
    # Data lost before.
    "output-dir-is-model": (lambda r: train_args(r, "--output_dir", r / "model"),
                            ["output_dir {root}/model is the base model's folder"]),
    "output-dir-inside-model": (lambda r: train_args(r, "--output_dir", r / "model" / "out"),
                                ["is inside the base model's folder"]),
    "output-dir-contains-model": (lambda r: train_args(r, "--output_dir", r),
                                  ["output_dir {root} contains the base model's folder"]),
    "split-into-its-input-folder": (lambda r: ["data", "split", r / "train.jsonl", "-o", r],
                                    ["{root}/train.jsonl: would overwrite an input"]),
    "split-ratios-not-100": (lambda r: ["data", "split", r / "train.jsonl", "-o", r / "inputs" / "split",
                                        "--ratios", "80/10"], ["--ratios 80/10: the parts add up to 90"]),
    # Tracebacks before.
    "recipe-not-utf8": (lambda r: ["train", recipe_text(r, "# caf", encoding_bytes=b"\xe9\n")],
                        ["edited.yaml:10: not UTF-8 text (byte 0xe9 at column 6)"]),
    "data-not-utf8": (lambda r: train_args(r, "--dataset_name", data_variant(
        r, "latin.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "x"}\n')),
        ["inputs/latin.jsonl:2: not UTF-8 text (byte 0xe9 at column 21)"]),
    "lora-target-missing": (lambda r: train_args(r, "--method", "lora", "--lora_target_modules", "[q_proj, qkv]"),
                            ["lora_target_modules qkv matches no module", "q_proj, up_proj, v_proj"]),
    "output-dir-is-a-file": (lambda r: train_args(r, "--output_dir", r / "train.jsonl"),
                             ["{root}/train.jsonl is a file, not a folder"]),
    "model-needs-own-code": (lambda r: train_args(r, "--model_name_or_path", model_variant(r, "remote",
                                                                                         needs_own_code)),
                             ["needs its own Python code", "set trust_remote_code: true if you trust"]),
    "model-type-unknown": (lambda r: train_args(r, "--model_name_or_path", model_variant(r, "mystery",
                                                                                       unknown_model_type)),
                           ["model_type 'mystery_lm' is unknown", "trust_remote_code: true"]),
    "chat-format-on-instruction-rows": (lambda r: train_args(r, "--dataset_format", "chat"),
                                        ["train.jsonl:1: 'messages' must be a non-empty list",
                                         "the data looks like instruction", "remove dataset_format"]),
    # Misleading before.
    "invalid-jinja": (lambda r: train_args(r, "--chat_template", "{% for m in messages %}{{ m.content }{% endfor %}"),
                      ["the chat template is not valid Jinja: line 1 of the template: unexpected '}'"]),
    "load-best-without-eval": (lambda r: train_args(r, "--load_best_model_at_end", "true"),
                               ["but found: Evaluation strategy: no; Save strategy: steps"]),
    "pickled-weights": (lambda r: train_args(r, "--model_name_or_path", model_variant(r, "pickled",
                                                                                    pickled_weights_only)),
                        ["only pickled weights (pytorch_model.bin)", "refused", "sft loads only safetensors",
                         "save_pretrained(FOLDER)"]),
    "pickled-weights-with-remote-code": (
        lambda r: train_args(r, "--model_name_or_path", model_variant(r, "pickled-trusted", pickled_weights_only),
                             "--trust_remote_code", "true"),
        ["only pickled weights (pytorch_model.bin)", "refused", "sft loads only safetensors"]),
    "option-without-value": (lambda r: train_args(r, "--learning_rate"),
                             ["command line: --learning_rate needs a value, as in --learning_rate VALUE"]),
    "seed-negative": (lambda r: train_args(r, "--seed", "-1"),
                      ["command line: seed must be a whole number from 0 to 4294967295 (numpy's seed range), got -1"]),
    "trainable-layers-without-freeze": (lambda r: train_args(r, "--trainable_layers", "1"),
                                        ["command line: trainable_layers set but method is full", "method: freeze"]),
    "freeze-regex-invalid": (lambda r: train_args(r, "--method", "freeze", "--trainable_modules", "['(q_proj']"),
                             ["command line: trainable_modules '(q_proj' is not a valid regular expression"]),
    # `sft check` said "OK: the run would start" before, and `sft train` failed.
    "check-finished-run": (lambda r: ["check", r / "recipe.yaml"], ["{root}/run: this run is finished"]),
    "check-lora-target-missing": (lambda r: ["check", r / "recipe.yaml", "--method", "lora",
                                             "--lora_target_modules", "[q_proj, qkv]"],
                                  ["lora_target_modules qkv matches no module"]),
    "check-freeze-matches-nothing": (lambda r: ["check", r / "recipe.yaml", "--method", "freeze",
                                                "--trainable_modules", "[no_such_module]"],
                                     ["trainable_modules ['no_such_module'] match no parameter of the model"]),
    "yaml-unclosed-bracket": (lambda r: ["train", recipe_text(r, "lora_target_modules: [q_proj, v_proj\nseed: 1\n")],
                              ["edited.yaml:10: not valid YAML: a '[' list opens here and is not closed"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(case, finished):
    args, fragments = CASES[case]
    arguments = args(finished)  # inputs are made before the digest: only what the command does is compared
    before = tree_digest(finished)
    proc = run_cli_in_process(*arguments)
    assert_one_line_error(proc, *(f.replace("{root}", str(finished)) for f in fragments))
    after = tree_digest(finished)
    assert after == before


def test_check_refuses_a_push_without_a_token_as_train_does(finished, tmp_path):
    no_token = {"HF_TOKEN": "", "HF_TOKEN_PATH": str(tmp_path / "no-token")}
    for command in ("check", "train"):
        proc = run_cli(command, finished / "recipe.yaml", "--push_to_hub", "true", env=no_token)
        assert_one_line_error(proc, "recipe.yaml: push_to_hub is true but no Hub token was found; set HF_TOKEN")


@pytest.mark.parametrize("case", ["negative-learning-rate", "option-without-value", "yaml-unclosed-bracket"])
def test_bad_input_contract_in_a_real_process(case, finished):
    """The table runs in-process (fast); these run `python -m sft.cli` as a user does: the exit code and the one
    line are what the process itself gives, library warnings and all."""
    args, fragments = CASES[case]
    proc = run_cli(*args(finished))
    assert_one_line_error(proc, *(f.replace("{root}", str(finished)) for f in fragments))


def test_yaml_error_names_the_line_a_quote_opens_on(tmp_path):
    from sft.errors import UserError
    from sft.recipe.reading import RecipeFile, read_yaml_with_lines

    path = tmp_path / "r.yaml"
    path.write_text('seed: 1\nrun_name: "first\nlearning_rate: 1.0e-4\n')
    with pytest.raises(UserError, match=r"r.yaml:2: not valid YAML: a quoted string opens here and is not closed"):
        read_yaml_with_lines(RecipeFile(path, "r.yaml", tmp_path))
    path.write_text("seed: 1\nsub:\n  a: 1\n  a: 2\n")  # duplicates are found at any depth
    with pytest.raises(UserError, match=r"r.yaml:4: key 'a' is given twice \(lines 3 and 4\)"):
        read_yaml_with_lines(RecipeFile(path, "r.yaml", tmp_path))


def test_ratios_that_add_up_are_accepted(tmp_path):
    from sft.after_training.splits import parse_ratios

    assert parse_ratios("90/10") == [0.9, 0.1]
    assert parse_ratios("0.8/0.1/0.1") == pytest.approx([0.8, 0.1, 0.1])


# ---------------------------------------------------------------------------------------------------------------
# During a run


def start_training(recipe, *overrides):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "sft.cli", "train", str(recipe), *map(str, overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_training(proc, out: Path, timeout=120):
    deadline = time.time() + timeout
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.2)


def long_recipe(finished, tmp_path, out):
    return write_recipe(tmp_path / "long.yaml", model_name_or_path=str(finished / "model"),
                        dataset_name=str(finished / "train.jsonl"), output_dir=str(out), max_steps=5000,
                        save_steps=4000, logging_steps=1, per_device_train_batch_size=4, max_length=64,
                        report_to="none", seed=0)


def interrupt(proc) -> tuple[int, str]:
    """Ctrl-C a training run: (the step it checkpointed at, its stderr)."""
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("sft: interrupted (Ctrl-C) at step ") and "Aborted" not in stderr, stderr[-2000:]
    return int(last.split("at step ")[1].split(":")[0]), stderr


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_the_next_step_exits_130_and_resumes(finished, tmp_path):
    out = tmp_path / "out"
    recipe = long_recipe(finished, tmp_path, out)
    proc = start_training(recipe)
    wait_for_training(proc, out)
    step, stderr = interrupt(proc)
    assert stderr.strip().splitlines()[-1].endswith(
        f"at step {step}: checkpoint-{step} saved in {out}; the same command resumes from it")
    assert (out / f"checkpoint-{step}" / "sft-complete.json").is_file()
    assert not (out / "model.safetensors").exists()  # not saved as finished

    resumed = run_cli("train", recipe, "--max_steps", step + 2, check=True)
    assert f"resuming from {out / f'checkpoint-{step}'}" in resumed.stderr
    assert f"done: {step + 2} steps" in resumed.stderr


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_dir_is_refused(finished, tmp_path):
    out = tmp_path / "out"
    recipe = long_recipe(finished, tmp_path, out)
    first = start_training(recipe)
    try:
        wait_for_training(first, out)
        before = tree_digest(out)
        second = run_cli("train", recipe)
        assert_one_line_error(second, f"{out}: another sft run (pid {first.pid}) is writing to this output_dir")
        assert first.poll() is None  # the first run goes on
        after = tree_digest(out)
        assert {k for k in set(before) | set(after) if before.get(k) != after.get(k)} <= {"metrics.jsonl"}
    finally:
        step, _ = interrupt(first)
    # The lock died with the first run's process: the same command now runs, resuming where it stopped.
    resumed = run_cli("train", recipe, "--max_steps", step + 1, check=True)
    assert f"resuming from {out / f'checkpoint-{step}'}" in resumed.stderr


def test_disk_full_during_a_run_is_one_line_naming_the_folder(finished, tmp_path):
    """A real ENOSPC: the run's metrics file is a link to /dev/full, so the first metrics line cannot be written."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to("/dev/full")
    proc = run_cli("train", finished / "recipe.yaml", "--output_dir", out, "--logging_steps", "1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {out}: disk full (no space left on device) while writing the run; free space or choose "
                    "another output_dir, then run the same command to resume from the last checkpoint")
    assert "Traceback" not in proc.stderr


def test_read_only_disk_is_named():
    """The machine runs tests as root without a read-only mount to write to, so the translation is checked on the
    OSError the kernel gives for one (EROFS, with the path it names)."""
    from sft.train.storage import storage_error

    err = OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/run/checkpoint-4/model.safetensors")
    assert str(storage_error(err, "/data/run")) == (
        "/data/run/checkpoint-4/model.safetensors: read-only file system; choose an output_dir on a writable disk, "
        "then run the same command to resume from the last checkpoint")
    assert storage_error(OSError(errno.ENOENT, "gone"), "/data/run") is None
