"""Data prepared once per node: under a distributed launch (accelerate launch, DeepSpeed, FSDP, torchrun) the
local main process of each node prepares the data while the other ranks wait, then they read its result from a
run-scoped folder on the node (Arrow files, memory-mapped) instead of reading, rendering and tokenizing it again.
A problem with the data reaches every rank as the same error."""

import json
import os
from pathlib import Path

from sft.errors import UserError


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def once_per_node(prepare):
    """prepare() on the node's local main process; the other ranks load what it saved."""
    if not distributed():
        return prepare()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from sft.masks.cache import owned_name, remove_at_exit, scratch_name, scratch_root

    state = PartialState()
    name = [owned_name("shared") + scratch_name() if state.is_main_process else None]
    broadcast_object_list(name)  # one folder name for the run, the same on every node
    # the cache may be on a file system every node sees: one folder per node, named by its local main's rank
    folder = scratch_root() / f"{name[0]}-{state.process_index - state.local_process_index}"
    data = error = None
    with state.local_main_process_first():
        try:
            if state.is_local_main_process:
                remove_at_exit(folder)
                try:
                    data = prepare()
                except UserError as err:
                    save_error(folder, str(err))
                    raise
                save(data, folder)
            else:
                data = load(folder)
        except UserError as err:  # raised on every rank once all have reached this point
            error = err
    if error is not None:
        raise error
    return data


def save_error(folder: Path, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.json").write_text(json.dumps({"error": message}))


def save(data, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data.train_full.save_to_disk(str(folder / "train"))
    if data.eval is not None:
        data.eval.save_to_disk(str(folder / "eval"))
    if data.eval_examples is not None:
        data.eval_examples.save_to_disk(str(folder / "eval_examples"))
    meta = {"stats": data.stats, "problems": data.problems, "notes": data.notes}
    (folder / "meta.json").write_text(json.dumps(meta))


def load(folder: Path):
    from datasets import load_from_disk

    from sft.data.prepared import PreparedData

    if (folder / "error.json").is_file():
        raise UserError(json.loads((folder / "error.json").read_text())["error"])
    meta = json.loads((folder / "meta.json").read_text())
    opened = {name: load_from_disk(str(folder / name)) if (folder / name).is_dir() else None
              for name in ("train", "eval", "eval_examples")}
    full = opened["train"]
    return PreparedData(full.select_columns(["input_ids", "labels"]), opened["eval"], meta["stats"],
                        meta["problems"], meta["notes"], full, opened["eval_examples"])
