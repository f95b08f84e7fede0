"""Work is never lost in output_dir: a finished model is never overwritten, --fresh never mixes two runs, a run
killed during its final save is finished from its checkpoint, a damaged checkpoint is never resumed from, a full
disk during a save is one line, and a stop on request exits non-zero. Real tiny runs, real files, real signals."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, quickstart_rows, run_cli, write_recipe


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """root/model, root/train.jsonl, and root/done: a finished 4-step run with checkpoints at steps 2 and 4."""
    from sft.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("output-dir")
    build_tiny_model(root / "model")
    quickstart_rows(root / "train.jsonl", 16)
    run_cli("train", recipe(root, root / "recipe.yaml", root / "done"), check=True)
    return root


def recipe(root, path, out, **extra):
    values = dict(model_name_or_path=str(root / "model"), dataset_name=str(root / "train.jsonl"), output_dir=str(out),
                  max_steps=4, save_steps=2, per_device_train_batch_size=4, max_length=64, learning_rate=1e-2,
                  logging_steps=1, report_to="none", seed=0)
    return write_recipe(path, **(values | extra))


def copy_run(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base / "done", out)
    return out, recipe(base, tmp_path / "recipe.yaml", out)


def one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip()
    assert proc.stderr.count("\n") == 1 and line.startswith("error: ") and "Traceback" not in line, proc.stderr
    for fragment in fragments:
        assert fragment in line, line


def digest(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".sft.lock"}  # the lock holds a pid


def test_a_finished_run_without_checkpoints_is_never_overwritten(base, tmp_path):
    out = tmp_path / "quick"
    first = recipe(base, tmp_path / "r.yaml", out, save_strategy="no", max_steps=2)
    run_cli("train", first, check=True)
    before = digest(out)
    again = run_cli("train", first, "--learning_rate", "5e-3")  # the README's "try another value" next step
    one_line(again, f"{out}: holds a finished model (sft-finished.json) and no checkpoint to train on from",
             "pass --fresh")
    assert digest(out) == before  # metrics.jsonl not appended to, model not rewritten

    fresh = run_cli("train", first, "--learning_rate", "5e-3", "--fresh", check=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("quick.previous-")]
    assert len(moved) == 1 and digest(moved[0]) == before  # the first run, whole, beside the new one
    assert f"was moved to {moved[0]}" in fresh.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]  # the new run's only


def test_fresh_moves_the_earlier_run_aside_and_a_later_run_never_resumes_it(base, tmp_path):
    out, path = copy_run(base, tmp_path)
    before = digest(out)
    run_cli("train", path, "--max_steps", "2", "--fresh", check=True)
    moved = next(p for p in tmp_path.iterdir() if p.name.startswith("run.previous-"))
    assert digest(moved) == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    # Plain run with a higher max_steps: resumes the new run's checkpoint-2, never the old run's checkpoint-4.
    later = run_cli("train", path, "--max_steps", "3", check=True)
    assert f"resuming from {out / 'checkpoint-2'}" in later.stderr and "done: 3 steps" in later.stderr


@pytest.mark.parametrize("killed", ["before the final save", "during the final save"])
def test_a_run_killed_at_its_final_save_is_finished_from_its_last_checkpoint(killed, base, tmp_path):
    out, path = copy_run(base, tmp_path)
    trained = {k: v.clone() for k, v in load_file(str(out / "model.safetensors")).items()}  # not a map of the file
    (out / "sft-finished.json").unlink()  # the marker is written last: a kill before it leaves none
    if killed == "before the final save":
        for name in ("model.safetensors", "generation_config.json", "tokenizer.json"):
            (out / name).unlink()
    else:
        (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:1000])
    proc = run_cli("train", path, check=True)
    assert "checkpoint-4 reached the end of the run but the final save did not finish" in proc.stderr
    assert not (out / "checkpoint-5").exists() and "resuming" not in proc.stderr  # no step trained
    finished = load_file(str(out / "model.safetensors"))
    assert finished.keys() == trained.keys() and all((finished[k] == trained[k]).all() for k in trained)
    assert json.loads((out / "sft-finished.json").read_text())["global_step"] == 4
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"]  # stops where it learned to
    one_line(run_cli("train", path), "this run is finished (checkpoint-4 reached max_steps 4)")


def damage_file(path, how):
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state.pth",
                                  "scheduler.pt"])
@pytest.mark.parametrize("how", ["truncated", "emptied", "deleted"])
def test_a_damaged_checkpoint_is_found_and_passed_over(name, how, base, tmp_path):
    from sft.train.checkpoints import complete_checkpoints, newest_whole_checkpoint

    out = tmp_path / "run"
    shutil.copytree(base / "done", out)
    damage_file(out / "checkpoint-4" / name, how)
    found, notes = newest_whole_checkpoint(out)
    assert found == out / "checkpoint-2" and complete_checkpoints(out) == [out / "checkpoint-2"]
    saved = (base / "done" / "checkpoint-4" / name).stat().st_size
    why = "is missing" if how == "deleted" else \
        f"has {(out / 'checkpoint-4' / name).stat().st_size:,} bytes, {saved:,} were saved"
    assert notes == [f"checkpoint-4 is damaged ({name} {why}); not resuming from it"]


def test_resuming_falls_back_to_the_previous_whole_checkpoint_with_one_line(base, tmp_path):
    out, path = copy_run(base, tmp_path)
    (out / "checkpoint-4" / "optimizer.pt").write_bytes(b"")
    proc = run_cli("train", path, "--max_steps", "5", check=True)
    assert "checkpoint-4 is damaged (optimizer.pt has 0 bytes" in proc.stderr
    assert f"resuming from {out / 'checkpoint-2'}" in proc.stderr and "done: 5 steps" in proc.stderr

    for folder in ("checkpoint-2", "checkpoint-4", "checkpoint-5"):
        (out / folder / "rng_state.pth").unlink(missing_ok=True)
        (out / folder / "trainer_state.json").write_bytes(b"")
    before = digest(out)
    one_line(run_cli("train", path, "--max_steps", "6"), f"{out}: no whole checkpoint to resume from",
             "pass --fresh")
    assert digest(out) == before


def test_a_file_another_rank_renames_away_while_this_rank_syncs_the_checkpoint_is_passed_over(tmp_path):
    """Rank 1 can list checkpoint-N while rank 0 still writes into it: a temporary file it listed is renamed before
    it is opened (CI failed so: FileNotFoundError on checkpoint-52/.tmpNxJFvn). Rank 0 syncs the final file."""
    from sft.train.checkpoints import checkpoint_files, fsync_paths

    folder = tmp_path / "checkpoint-52"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / ".tmpNxJFvn").write_text("{}")
    listed = checkpoint_files(folder)
    (folder / ".tmpNxJFvn").rename(folder / "trainer_state.json")  # rank 0's atomic write finishes
    fsync_paths([*listed, folder])
    assert [p.name for p in listed] == [".tmpNxJFvn", "model.safetensors"]


def test_a_checkpoint_marker_written_by_an_older_sft_is_still_trusted(base, tmp_path):
    from sft.train.checkpoints import COMPLETE_MARKER, complete_checkpoints

    out, _ = copy_run(base, tmp_path)
    (out / "checkpoint-4" / COMPLETE_MARKER).write_text('{"global_step": 4}\n')  # no file list
    assert complete_checkpoints(out) == [out / "checkpoint-2", out / "checkpoint-4"]


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_leaves_no_complete_checkpoint(base, tmp_path):
    """torch.save's writer reports ENOSPC as RuntimeError("... unexpected pos ..."): a real one, from /dev/full."""
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "optimizer.pt").symlink_to("/dev/full")
    proc = run_cli("train", recipe(base, tmp_path / "r.yaml", out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out}: disk full (no space left on device) while writing the run; free space or choose another "
        "output_dir, then run the same command to resume from the last checkpoint")
    assert "Traceback" not in proc.stderr and not (out / "checkpoint-2" / "sft-complete.json").exists()


@pytest.mark.parametrize("value", ["{tmp}/nowhere/checkpoint-7", "true"])
def test_resume_from_a_checkpoint_that_is_not_there_is_one_line_before_anything_is_written(value, base, tmp_path):
    out = tmp_path / "never"
    proc = run_cli("train", recipe(base, tmp_path / "r.yaml", out), "--resume_from_checkpoint",
                   value.format(tmp=tmp_path))
    one_line(proc, "resume_from_checkpoint: ")
    assert not out.exists()


def test_a_stop_on_request_exits_75_after_its_checkpoint(base, tmp_path):
    out = tmp_path / "long"
    path = recipe(base, tmp_path / "r.yaml", out, max_steps=5000, save_steps=4000)
    proc = subprocess.Popen([sys.executable, "-m", "sft.cli", "train", str(path)], cwd=REPO, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    step = int(stderr.split("stopped on request at step ")[1].split(":")[0])
    assert (out / f"checkpoint-{step}" / "sft-complete.json").is_file()
    assert not (out / "sft-finished.json").exists()
