"""Generation samples reach every tracker, offline, in the metrics' run and on the training step axis: a real
`sft train` reporting to tensorboard, wandb (offline mode) and trackio (its local SQLite database), and what each
of them stored, read back with its own format."""

import json
import sqlite3
import struct

import pytest

from tests.conftest import quickstart_rows, run_cli, write_recipe

PROMPTS = ["Uppercase: abc", "Uppercase: hello world"]
SAMPLE_STEPS = [2, 4, 6]  # sample_every_n_steps 2 of 6


@pytest.fixture(scope="module")
def tracked_run(tiny_model, tmp_path_factory):
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    root = tmp_path_factory.mktemp("tracked")
    quickstart_rows(root / "train.jsonl", 48)
    # An evaluation after every step: wandb and trackio then count two log lines per training step, so their own
    # step runs ahead of the training step (where wandb dropped samples given step=global_step).
    recipe = write_recipe(
        root / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(root / "train.jsonl"),
        output_dir=str(root / "run"), method="lora", max_length=64, max_steps=6, per_device_train_batch_size=8,
        learning_rate=2.0e-2, logging_steps=1, eval_strategy="steps", eval_steps=1, test_split_size=8,
        save_strategy="no", seed=0, project="sft-trackers", report_to=["tensorboard", "wandb", "trackio"],
        sample_prompts=PROMPTS, sample_every_n_steps=2, sample_max_new_tokens=4,
    )
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_CONFIG_DIR": str(root / "wandb"),
           "WANDB_CACHE_DIR": str(root / "wandb"), "WANDB_DATA_DIR": str(root / "wandb"), "WANDB_SILENT": "true",
           "TRACKIO_DIR": str(root / "trackio")}
    (root / "wandb").mkdir()
    run_cli("train", recipe, env=env, check=True)
    samples = [json.loads(line) for line in (root / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [s for s in SAMPLE_STEPS for _ in PROMPTS]
    return root, samples


def completions_at(samples: list[dict], step: int) -> list[list]:
    return [[step, r["prompt"], r["completion"]] for r in samples if r["step"] == step]


@pytest.mark.slow
def test_tensorboard_gets_samples_in_the_metrics_run(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, samples = tracked_run
    [run_dir] = list((root / "run" / "runs").iterdir())  # one run: samples beside the scalars, not a second one
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    assert sorted(texts) == SAMPLE_STEPS
    for step, text in texts.items():
        assert text == "\n\n".join(f"**{p}**\n\n{c}" for _, p, c in completions_at(samples, step))


def wandb_records(path):
    """The records of a wandb run file: LevelDB's log format (32 KiB blocks, 7-byte chunk headers) after wandb's
    7-byte file header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.slow
def test_wandb_offline_gets_every_sample_table_on_the_training_step(tracked_run):
    root, samples = tracked_run
    [run_dir] = list((root / "wandb" / "wandb").glob("offline-run-*"))
    [run_file] = list(run_dir.glob("run-*.wandb"))
    history = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    losses = [row["train/global_step"] for row in history if "train/loss" in row]
    assert losses == [1, 2, 3, 4, 5, 6]
    tables = [row for row in history if "samples/path" in row]
    assert [row["train/global_step"] for row in tables] == SAMPLE_STEPS  # none dropped, each at its training step
    for row in tables:
        table = json.loads((run_dir / "files" / row["samples/path"]).read_text())
        assert table["columns"] == ["step", "prompt", "completion"]
        assert table["data"] == completions_at(samples, row["train/global_step"])


@pytest.mark.slow
def test_trackio_gets_samples_on_the_metrics_step_axis(tracked_run):
    root, samples = tracked_run
    database = sqlite3.connect(root / "trackio" / "sft-trackers.db")
    rows = database.execute("SELECT run_name, step, metrics FROM metrics ORDER BY step").fetchall()
    assert len({run for run, _, _ in rows}) == 1  # samples and metrics in one run
    logged = [(step, json.loads(metrics)) for _, step, metrics in rows]
    steps = [step for step, _ in logged]
    assert steps == sorted(set(steps))  # one axis, no step logged twice or out of order
    losses = [m["train/global_step"] for _, m in logged if "train/loss" in m]
    assert losses == [1, 2, 3, 4, 5, 6]
    tables = [m for _, m in logged if "samples" in m]
    assert [m["train/global_step"] for m in tables] == SAMPLE_STEPS
    for m in tables:
        table = m["samples"]  # trackio stores a table as {_type: trackio.table, _value: [row dicts]}
        assert table["_type"] == "trackio.table"
        assert [[r["step"], r["prompt"], r["completion"]] for r in table["_value"]] == completions_at(
            samples, m["train/global_step"])
