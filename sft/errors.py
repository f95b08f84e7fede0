"""User-facing errors: one line on stderr, exit code 2, no traceback unless --debug."""

import os
import sys

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
# Stopped on request (SIGTERM, SIGUSR1, Slurm's stop file) after a checkpoint: not finished, run again to resume
# (sysexits' EX_TEMPFAIL: a temporary failure, to be retried).
EXIT_STOPPED = 75


class UserError(Exception):
    """Bad input from the user (recipe, data, paths, flags). The message is the whole story."""


def debug_enabled() -> bool:
    return os.environ.get("SFT_DEBUG", "") not in ("", "0")


def take_debug_flag(argv: list[str]) -> list[str]:
    """Remove `--debug` wherever it appears (before or after the recipe) and remember it in the environment,
    so child processes launched by accelerate or Slurm inherit it."""
    if "--debug" in argv:
        os.environ["SFT_DEBUG"] = "1"
        argv = [a for a in argv if a != "--debug"]
    return argv


def exit_on_user_error(fn, *args, **kwargs):
    """Run fn; turn a UserError into one line on stderr and exit code 2, a Ctrl-C into one line and exit code 130
    (traceback only with --debug)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if debug_enabled():
            raise
        leave(EXIT_BAD_INPUT, f"error: {err}")
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        leave(EXIT_INTERRUPTED, "sft: interrupted (Ctrl-C)")


def leave(code: int, line: str):
    """Exit with one line on stderr: printed by one process of a multi-process run (see sft/launch/status.py)."""
    from sft.launch.status import prints_for_the_run, report_end

    report_end(code, line)
    if prints_for_the_run():
        print(line, file=sys.stderr)
    sys.exit(code)


def read_utf8(path, shown=None) -> str:
    """A text file's contents; a file that is not UTF-8 fails naming the file, line and column of the first bad
    byte (Python's own error gives only a byte offset)."""
    from pathlib import Path

    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise not_utf8(shown or path, raw, err.start) from None


def not_utf8(shown, raw: bytes, offset: int, first_line: int = 1) -> UserError:
    """UserError for the byte at `offset` of `raw`, which is not UTF-8 (raw starts at line first_line)."""
    line = first_line + raw.count(b"\n", 0, offset)
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return UserError(f"{shown}:{line}: not UTF-8 text (byte 0x{raw[offset]:02x} at column {column}); save the file "
                     "as UTF-8")
