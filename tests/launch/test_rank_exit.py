"""A rank of a multi-process run ends through sft.launch.status.exit_rank: its exit handlers run and its output is
flushed, but the interpreter's teardown (where DeepSpeed's gloo threads could abort a finished run) does not run."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, sys
    from sft.launch.status import exit_rank

    class TornDown:  # a module global: deleted only by the interpreter's teardown
        def __del__(self):
            print("teardown ran", flush=True)

    kept = TornDown()
    atexit.register(lambda: print("exit handler ran"))
    print("buffered, ", end="")  # a pipe is block-buffered: lost unless flushed
    {leave}(75)
""")


def run_script(leave: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(leave=leave)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_rank_runs_its_exit_handlers_and_flushes_but_skips_the_interpreter_teardown():
    proc = run_script("exit_rank")
    assert (proc.returncode, proc.stdout, proc.stderr) == (75, "buffered, exit handler ran\n", "")


def test_the_same_script_ending_with_sys_exit_runs_the_teardown():  # what exit_rank leaves out
    proc = run_script("sys.exit")
    assert (proc.returncode, proc.stdout) == (75, "buffered, exit handler ran\nteardown ran\n")
