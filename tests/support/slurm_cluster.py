"""A real one-node Slurm cluster (Debian's slurm-wlm and munge, run as root) for the Slurm tests.

slurm.conf names this host as controller and only node; state, spool, logs and the config live in one
temporary folder, ports are picked free, and clients find the cluster through SLURM_CONF.
`python tests/support/slurm_cluster.py DIR` starts one by hand (Ctrl-C stops it).
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sft.launch.launcher import free_port

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sacct")


def missing_tools() -> list[str]:
    return [t for t in TOOLS[:5] if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _munge_running() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        if not _munge_running():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            subprocess.run(["munged", "--force"], check=True, capture_output=True)
            for _ in range(50):
                if _munge_running():
                    break
                time.sleep(0.1)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 1
        self.conf.write_text("\n".join([
            "ClusterName=sfttest",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/builtin",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "KillWait=30",
            "MinJobAge=600",
            f"NodeName={self.host} CPUs={cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]) + "\n")
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.root / "log" / f"{daemon}.stdout", "w")
            self.procs.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Slurm did not come up: sinfo says {out!r}; see {self.root / 'log'}")

    def run(self, *args, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(map(str, args)), env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))}: {proc.stderr.strip()}")
        return proc

    def submit(self, script: Path, cwd: Path) -> str:
        out = subprocess.run(["sbatch", "--parsable", str(script)], cwd=cwd, env=self.env, capture_output=True,
                             text=True, check=True).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def wait_for(self, job_id: str, predicate, timeout: float, poll: float = 0.5) -> dict:
        deadline = time.time() + timeout
        info = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if predicate(info):
                return info
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s: {info}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


if __name__ == "__main__":
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops the daemons too
    cluster = SlurmCluster(Path(sys.argv[1])).start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        cluster.stop()
