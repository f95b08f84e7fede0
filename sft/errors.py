"""User-facing errors: one line on stderr, exit code 2, no traceback unless --debug."""

import os
import sys

EXIT_BAD_INPUT = 2


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
    """Run fn; turn a UserError into one line on stderr and exit code 2 (traceback only with --debug)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if debug_enabled():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
