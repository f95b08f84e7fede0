"""What the user sees: one-line messages from the main process, and known library noise kept out of the way."""

import logging
import os
import sys
import warnings


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    """One line for the user, from the main process only."""
    if is_main_process():
        print(f"sft: {message}", file=sys.stderr, flush=True)


def quiet_library_noise() -> None:
    """Silence messages users cannot act on, so a bad input reads as one line."""
    # bitsandbytes looks for an optional CPU kernel on the Hub at import and logs its absence.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # TRL's own SFTConfig default sets the renamed `gradient_checkpointing`; the user did nothing wrong.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
