"""How the ranks of an `sft launch` tell the launcher how the run ended, so that the user reads one line.

Under `sft launch` every rank writes its end (exit code and the line to print) to the file named by
$SFT_LAUNCH_STATUS before it exits; the launcher prints that line once, instead of one copy per rank followed by
torch-elastic's report of the failed ranks. Under a plain `accelerate launch` nothing is written and the main
rank prints the line itself."""

import json
import os
from pathlib import Path

STATUS_ENV = "SFT_LAUNCH_STATUS"


def prints_for_the_run() -> bool:
    """Whether this process prints how the run ended: the launcher does under sft launch, else global rank 0."""
    return STATUS_ENV not in os.environ and os.environ.get("RANK", "0") == "0"


def report_end(code: int, line: str | None = None, failing: bool = True) -> bool:
    """Record how this rank ends (every rank the same; the first to finish writes it whole, by a rename).
    `failing`: this rank exits non-zero, so torch-elastic's report follows. Returns whether a launcher is
    listening."""
    if STATUS_ENV not in os.environ:
        return False
    path = Path(os.environ[STATUS_ENV])
    part = path.with_name(f"{path.name}.{os.getpid()}")
    part.write_text(json.dumps({"code": code, "line": line, "failing": failing}))
    os.replace(part, path)
    return True


def read_end(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def exit_rank(code: int):
    """End one rank of a multi-process run whose process group is already destroyed, without the interpreter's
    teardown.

    DeepSpeed's hooks keep its engine, and the gloo process groups its parameters hold, alive until that teardown;
    a gloo thread that drops its last tensor while the interpreter is being torn down can abort the process
    ("terminate called without an active exception", SIGABRT). The run was saved and marked finished by then,
    yet torch-elastic reported it failed. So the exit handlers run here (scratch folders, trackers, logging), the
    output is flushed, and the process leaves as multiprocessing's own children do, with os._exit."""
    import atexit
    import sys

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
