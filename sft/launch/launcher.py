"""`sft launch`: pick a profile with the planner for the GPUs (or, on a CPU machine, the processes) at hand, refuse
what cannot work, and run `accelerate launch --config_file accelerate_configs/NAME.yaml ... sft/run.py RECIPE`."""

import importlib.util
import os
import shlex
import subprocess
import sys

from sft.errors import UserError
from sft.launch.profiles import DEEPSPEED_INSTALL, PROFILES, RUN_SCRIPT, applicable, combination_fixes, profile_named


def detect(num_processes: int | None) -> tuple[bool, int, float]:
    """(on_gpu, processes, memory per process in GB): GPUs when there are any, else CPU processes sharing RAM."""
    import torch

    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        processes = num_processes or gpus
        if processes > gpus:
            raise UserError(f"--num-processes {processes}: this machine has {gpus} GPUs")
        return True, processes, torch.cuda.get_device_properties(0).total_memory / 1e9
    processes = num_processes or 1
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return False, processes, ram / processes


def accelerate_command(profile: str, processes: int, recipe: str | None, overrides) -> list[str]:
    """Absolute paths, so the command works from any directory."""
    return [sys.executable, "-m", "accelerate.commands.launch", *PROFILES[profile].accelerate_args(processes),
            str(RUN_SCRIPT), *([recipe] if recipe else []), *overrides]


def choose(recipe, recipe_address: str, profile: str, on_gpu: bool, processes: int, memory_gb: float,
           asked_by: str = "--profile") -> tuple[str, str]:
    """(profile name, why). `asked_by` names where a profile was asked for (the option or the recipe's key)."""
    if profile != "auto":
        chosen = profile_named(profile)
        reason = applicable(chosen, recipe.sft.method, bool(recipe.model.load_in_8bit), processes)
        if reason:
            raise UserError(f"{asked_by} {profile}: {reason}; run `sft plan {recipe_address}` to see which fit")
        return chosen.name, "as asked"
    from sft.launch.plan import make_plan, recommendation_advice

    plan = make_plan(recipe, processes, memory_gb, half=bool(on_gpu), recipe_address=recipe_address)
    if plan["recommended"] is None:
        raise UserError(f"{recipe_address}: {recommendation_advice(plan)}")
    estimate = next(p for p in plan["profiles"] if p["name"] == plan["recommended"])
    unit = "GPU" if on_gpu else "process"
    return plan["recommended"], (f"cheapest that fits: {estimate['per_gpu_bytes'] / 1e9:.1f} of {memory_gb:.0f} GB "
                                 f"per {unit}")


def launch(recipe_address: str | None, overrides=(), profile: str | None = None, num_processes: int | None = None,
           dry_run: bool = False) -> int:
    """Options given here win over the recipe's `accelerate_config` and `num_processes` keys (TRL's CLI keys)."""
    from sft.console import say
    from sft.recipe.load import load_recipe
    from sft.train.hardware import default_cuda_allocator

    default_cuda_allocator()  # before torch is imported; the ranks inherit it with the rest of os.environ
    recipe = load_recipe(recipe_address, overrides)
    asked_by = "--profile" if profile else "accelerate_config"
    profile = profile or recipe.sft.accelerate_config or "auto"
    on_gpu, processes, memory_gb = detect(num_processes or recipe.sft.num_processes)
    name, why = choose(recipe, recipe_address or "...", profile, on_gpu, processes, memory_gb, asked_by)
    # Every process of the run fits the recipe to the launch (sft/recipe/finalize.py); here only the refusals,
    # before anything starts.
    chosen = PROFILES[name]
    if chosen.deepspeed_config and importlib.util.find_spec("deepspeed") is None:
        # accelerate itself would fail with a traceback before the run starts
        raise UserError(f"profile {name} needs DeepSpeed, which is not installed; install it after torch with: "
                        f"{DEEPSPEED_INSTALL}")
    combination_fixes(recipe, chosen.zero_stage, processes, on_gpu, chosen.read_deepspeed_config(), chosen.fsdp)
    cmd = accelerate_command(name, processes, recipe_address, overrides)
    say(f"profile {name} ({why}), {processes} {'GPU' if on_gpu else 'CPU'} process{'es' * (processes > 1)}")
    say("accelerate launch " + shlex.join(cmd[3:]))
    if dry_run:
        return 0
    # A free rendezvous port: with accelerate's default 29500 taken (another run on this machine), accelerate warns
    # on stderr before the run's own lines.
    cmd[3:3] = ["--main_process_port", str(free_port())]
    return supervise(cmd, {**os.environ, "SFT_LAUNCHED": "1"})


def free_port() -> int:
    """A port no other process holds, chosen below the kernel's ephemeral range: a port the kernel handed out for
    `bind(0)` and released is soon handed to someone else's socket (gloo's pairs, an HTTP client), and a rendezvous
    store that finds its port taken joins the stranger as a client and fails with "Failed to recv"."""
    import random
    import socket
    from pathlib import Path

    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    candidates = random.Random().sample(range(max(1024, ephemeral_low - 12000), ephemeral_low), 64)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("", port))  # all interfaces, as torch's store binds
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # a crowded machine: the kernel's choice
        probe.bind(("", 0))
        return probe.getsockname()[1]


def supervise(cmd: list[str], env: dict) -> int:
    """Run accelerate and its ranks in a session of their own, so that a Ctrl-C reaches this process alone: it
    forwards SIGINT/SIGTERM to the ranks, which checkpoint together and stop, and exits as they report (130 after a
    Ctrl-C). A bad input is the ranks' one line, printed here once, with torch-elastic's report of the failed ranks
    left out."""
    import signal
    import tempfile
    import threading
    from pathlib import Path

    from sft.launch.status import STATUS_ENV, read_end

    with tempfile.TemporaryDirectory(prefix="sft-launch-") as folder:
        status = Path(folder) / "status.json"
        proc = subprocess.Popen(cmd, env={**env, STATUS_ENV: str(status)}, stderr=subprocess.PIPE,
                                start_new_session=True)
        received = []

        def forward(signum, _frame):
            received.append(signum)
            signal_ranks(proc.pid, signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        relay = threading.Thread(target=relay_until_ended, args=(proc.stderr, status), daemon=True)
        relay.start()
        try:
            proc.wait()
            relay.join()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        end = read_end(status)
    if end is not None:
        if end.get("line"):
            print(end["line"], file=sys.stderr)
        return end["code"]
    return 128 + received[0] if received else proc.returncode  # stopped by a signal: as shells report it


def signal_ranks(launcher_pid: int, signum: int) -> None:
    """The ranks are accelerate's (torch-elastic's) children; the agent itself would SIGKILL them 30 s later."""
    import psutil

    try:
        agent = psutil.Process(launcher_pid)
        ranks = agent.children() or [agent]  # none started yet: accelerate stops before it starts them
    except psutil.NoSuchProcess:
        return
    for rank in ranks:
        try:
            rank.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def relay_until_ended(stream, status) -> None:
    """Copy the ranks' stderr (progress bars included) to ours until a rank has reported that it fails; what
    follows is torch-elastic's account of the failed ranks, which the one line replaces."""
    from sft.launch.status import read_end

    out = sys.stderr.buffer
    while chunk := os.read(stream.fileno(), 65536):
        if not (status.exists() and (read_end(status) or {}).get("failing", True)):
            out.write(chunk)
            out.flush()
