"""Stopping cleanly when asked (Slurm's time-limit or preemption warning, SIGTERM), and checkpoints that are
known to be whole.

- `StopOnRequest`: SIGUSR1, SIGTERM, Ctrl-C (SIGINT; a second one stops at once) or the stop file the Slurm
  script touches (see sft/launch/slurm.py) only sets a flag; at a step boundary every rank agrees on it, saves a
  checkpoint and stops training. Saving from inside a signal handler could interrupt an optimizer step halfway.
  One process stops at the next step; several agree with one all-reduce about once a second (every step when
  steps are slower than that), not at every step.
- `MarkCompleteCheckpoints`: after every rank has written its part of a checkpoint, the main process writes a
  marker into it last. sft/train/checkpoints.py resumes only from checkpoints with the marker, so a process killed in
  the middle of a save leaves a partial checkpoint that is never resumed from, and the previous one usable. The
  marker lists each file's size and digest, so a checkpoint damaged later is found before resuming from it.
  (The Trainer writes trainer_state.json from rank 0 without waiting for the other ranks' files, and not
  atomically, so that file alone does not prove a checkpoint is whole.)
"""

import json
import os
import signal
import time
from pathlib import Path

from transformers import TrainerCallback

from sft.io import write_atomic
from sft.launch.slurm import STOP_FILE_ENV
from sft.train.checkpoints import COMPLETE_MARKER, fsync_tree, manifest

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)  # SIGINT: Ctrl-C


def all_ranks_any(flag: bool, device) -> bool:
    """True on every rank when it is true on any rank (each rank may have seen the signal at a different step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


AGREE_EVERY_SECONDS = 1.0  # a stop waits at most about this long (or one step) for the ranks to agree on it
MAX_STEPS_BETWEEN_AGREEMENTS = 1000


def steps_between_agreements(seconds_per_step: float) -> int:
    """How many steps to train between two all-reduces of the stop flag: about AGREE_EVERY_SECONDS of training, so
    the collective and its device sync cost well under 1% of the time and a stop is still answered within about
    a second."""
    if seconds_per_step <= 0:
        return 1
    return max(1, min(MAX_STEPS_BETWEEN_AGREEMENTS, int(AGREE_EVERY_SECONDS / seconds_per_step)))


def all_ranks_agree(asked: bool, proposed_steps: int, device) -> tuple[bool, int]:
    """(asked on any rank, the fewest steps any rank proposes until the next agreement), with one all-reduce."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if asked else 0, -proposed_steps], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    asked_anywhere, fewest = value.tolist()
    return bool(asked_anywhere), -fewest


class StopOnRequest(TrainerCallback):
    """Checkpoint and stop at a step boundary after SIGUSR1/SIGTERM/Ctrl-C or once the stop file exists.

    A single process stops at the next step. Several processes must stop at the same step, and a signal may reach
    only one of them, so they agree with an all-reduce; it runs at steps every rank knows in advance (the previous
    agreement fixes the next one), about AGREE_EVERY_SECONDS of training apart, so most steps have no collective
    and no device sync. The price: a stop waits up to about a second (or one step, if steps are slower)."""

    def __init__(self, stop_file: str | None = None):
        self.stop_file = stop_file if stop_file is not None else os.environ.get(STOP_FILE_ENV)
        self.requested_by: str | None = None  # set by the signal handler
        self.stopped_at: int | None = None  # the step whose checkpoint was saved before stopping
        self._previous = {}
        self.distributed = False
        self.next_agreement = 0  # the step at which the ranks next all-reduce the flag
        self.last_agreement = (0, 0.0)  # (step, time) of the previous one

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.requested_by == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without waiting for the checkpoint
        self.requested_by = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs):
        import torch.distributed as dist

        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.next_agreement = state.global_step + 1  # the same on every rank, resumed or not
        self.last_agreement = (state.global_step, time.monotonic())

    def asked(self) -> bool:
        return self.requested_by is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def on_step_end(self, args, state, control, **kwargs):
        if not self.distributed:
            stop = self.asked()
        elif state.global_step < self.next_agreement:
            return control
        else:
            step, now = state.global_step, time.monotonic()
            seconds_per_step = (now - self.last_agreement[1]) / max(1, step - self.last_agreement[0])
            stop, steps = all_ranks_agree(self.asked(), steps_between_agreements(seconds_per_step), args.device)
            self.next_agreement, self.last_agreement = step + steps, (step, now)
        if stop:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class MarkCompleteCheckpoints(TrainerCallback):
    """Write the completeness marker into each checkpoint once every rank has finished saving it, and only then
    delete checkpoints beyond save_total_limit. (The Trainer itself deletes old checkpoints right after rank 0
    wrote the new one, before the other ranks finished theirs: a kill then would leave nothing to resume from.
    So the Trainer's own rotation is turned off for the run and done here instead, with its own function.)"""

    def __init__(self):
        self.save_total_limit = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.save_total_limit, args.save_total_limit = args.save_total_limit, None

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist
        from transformers.trainer_utils import rotate_checkpoints

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            fsync_tree(folder)  # this rank's files are on disk, not only in the page cache, before the marker
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's shards, RNG state and optimizer state are on disk
        if state.is_world_process_zero:
            if folder.is_dir():
                record = {"global_step": state.global_step, "files": manifest(folder)}
                write_atomic(folder / COMPLETE_MARKER, json.dumps(record) + "\n")
                rotate_checkpoints(args.output_dir, self.save_total_limit, state.best_model_checkpoint,
                                   use_mtime=True)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        args.save_total_limit = self.save_total_limit
