"""Run the per-node command of an `sft slurm` script as Slurm would on each node, here on loopback: one launch per
node, each with its own SLURM_NODEID, all meeting at the rendezvous 127.0.0.1:PORT."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sft.launch.launcher import free_port


def srun_task(script: str) -> str:
    """The command each Slurm task runs: the argument of `srun ... bash -c '...'`, as srun receives it."""
    line = next(li for li in script.splitlines() if li.startswith("srun "))
    words = shlex.split(line.rstrip("&"))
    return words[words.index("-c") + 1]


def wait_for_listener(port: int, process, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)


def run_nodes(task: str, folder: Path, nodes: int, timeout: float = 900, env: dict | None = None) -> dict:
    """Start `task` once per node (SLURM_NODEID 0..nodes-1) in `folder`; wait for all. Returns the exit codes and
    each node's log (stdout and stderr)."""
    port = free_port()
    launches, logs = [], [folder / f"node{n}.log" for n in range(nodes)]
    for node in range(nodes):
        node_env = {**os.environ, **(env or {}), "SLURM_NODEID": str(node), "MAIN_HOST": "127.0.0.1",
                    "MAIN_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with open(logs[node], "w") as log:
            launches.append(subprocess.Popen(["bash", "-c", task], cwd=folder, env=node_env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True))
        if node == 0 and nodes > 1:  # on a real cluster only the main host binds the rendezvous port; here all could
            wait_for_listener(port, launches[0])
    deadline = time.time() + timeout
    while any(p.poll() is None for p in launches) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in launches):
            break  # one node failed: the others would wait for the rendezvous timeout
        time.sleep(0.5)
    for p in launches:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and the training processes it started
            p.wait()
    return {"returncodes": [p.returncode for p in launches],
            "logs": [log.read_text(errors="replace") for log in logs]}
