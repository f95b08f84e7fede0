"""A full or read-only disk met while writing a run, as one line naming the path (and how to resume)."""

import contextlib
import errno

from sft.errors import UserError


# torch.save's C++ writer reports a failed write as a RuntimeError without errno ("unexpected pos", "file write
# failed"); during a save that is a full disk (or quota) in practice.
TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")


def storage_error(err: OSError | RuntimeError, output_dir) -> UserError | None:
    """A full or read-only disk met while writing, as one line naming the path; None for other errors."""
    if isinstance(err, RuntimeError):
        if not any(text in str(err) for text in TORCH_WRITE_FAILED):
            return None
        err = OSError(errno.ENOSPC, "No space left on device", str(output_dir))
    path = err.filename or output_dir
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{path}: disk full (no space left on device) while writing the run; free space or "
                         "choose another output_dir, then run the same command to resume from the last checkpoint")
    if err.errno == errno.EROFS:
        return UserError(f"{path}: read-only file system; choose an output_dir on a writable disk, then run the "
                         "same command to resume from the last checkpoint")
    return None


@contextlib.contextmanager
def storage_errors_named(output_dir, trainer=None):
    """Turn a full or read-only disk met while writing the run into one line naming the path (after the
    trainer's progress bar is closed, so the error is the last line)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        translated = storage_error(err, output_dir)
        if translated is None:
            raise
        if trainer is not None:
            from transformers.trainer_callback import ProgressCallback

            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                    callback.training_bar.close()
        raise translated from err
