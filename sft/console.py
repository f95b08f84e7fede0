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


def not_offline_trust_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Skipping publisher trust check")


def quiet_library_noise() -> None:
    """Silence messages users cannot act on, so a bad input reads as one line."""
    # bitsandbytes looks for an optional CPU kernel on the Hub at import and logs its absence.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # With `kernels` installed that lookup goes through it, which under HF_HUB_OFFLINE logs that it skips the
    # kernel's publisher trust check: the user chose offline, and only a kernel already in the cache can load.
    logging.getLogger("kernels._internals.hf_hub").addFilter(not_offline_trust_notice)
    # TRL's own SFTConfig default sets the renamed `gradient_checkpointing`; the user did nothing wrong.
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    # DeepSpeed ZeRO-3 calls torch's deprecated reduce_scatter_tensor and all_gather_into_tensor dozens of times a
    # step, and each filter change elsewhere re-arms the warnings: ~80 lines a step on CPU buried the loss.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
        category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class QuietChecks:
    """While the input is being checked, progress bars only on a terminal: in a log or a captured stderr a bad
    input then reads as one line, with no bars before it. (sft's own notes wait for the checks too.)"""

    def __enter__(self):
        import datasets
        from transformers.utils import logging as transformers_logging

        self._restore = []
        if sys.stderr.isatty():
            return self
        if not datasets.are_progress_bars_disabled():
            datasets.disable_progress_bars()
            self._restore.append(datasets.enable_progress_bars)
        if transformers_logging.is_progress_bar_enabled():
            transformers_logging.disable_progress_bar()
            self._restore.append(transformers_logging.enable_progress_bar)
        return self

    def __exit__(self, *exc):
        for restore in self._restore:
            restore()
        return False
