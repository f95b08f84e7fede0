"""One run per output_dir at a time. Two runs writing the same folder interleave metrics and overwrite each
other's checkpoints and final model, and both report success.

The main process holds an exclusive flock on output_dir/.sft.lock for the rest of its life; the kernel drops it
when the process exits or dies, so a crashed run never leaves a stale lock. The file holds the holder's pid for
the message the second run prints. Other ranks of the same run learn the outcome from the main process."""

import fcntl
import os
from pathlib import Path

from sft.errors import UserError

LOCK_FILE = ".sft.lock"
_held = {}  # output_dir -> open lock file, kept open (and so locked) until the process exits


def lock_output_dir(output_dir) -> None:
    """Take output_dir's lock for this process, or fail naming the process that holds it."""
    folder = Path(output_dir).resolve()
    if str(folder) in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # "a+": opening never truncates the holder's pid
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{output_dir}: another sft run (pid {holder}) is writing to this output_dir; wait for it "
                        "to finish or choose another output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[str(folder)] = handle


def lock_output_dir_on_all_ranks(output_dir, is_main_process: bool, device, move_earlier_run: bool = False):
    """The main process takes the lock (after moving an earlier run aside, with that run's folder locked meanwhile,
    when asked); every rank fails together when it could not (no rank left waiting). Returns where the earlier run
    went, on the main process."""
    from sft.train.output_dir import move_aside
    from sft.train.preemption import all_ranks_any

    refused, moved = None, None
    if is_main_process:
        try:
            if move_earlier_run and Path(output_dir).is_dir():
                lock_output_dir(output_dir)  # no run is writing the folder while it moves
                moved = move_aside(output_dir)
                _held.pop(str(Path(output_dir).resolve())).close()
            lock_output_dir(output_dir)
        except UserError as err:
            refused = err
    if all_ranks_any(refused is not None, device):
        raise refused or UserError(f"{output_dir}: another sft run is writing to this output_dir")
    return moved
