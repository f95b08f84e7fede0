"""Slurm batch scripts for a recipe: one task per node, each running `accelerate launch` with its own machine rank.

What the script gets right, against the failures users hit with hand-written ones:
- `--machine_rank` comes from each task's own `$SLURM_NODEID`, expanded by the task's shell (a variable in the
  batch step would be expanded once, and every node would claim rank 0 -- every node then trains alone);
- `#SBATCH` lines hold literal values only (sbatch never expands shell variables there);
- GPUs per node, partition, modules and the Python environment come from flags or from the environment
  `sft slurm` runs in, never from constants;
- preemption: Slurm sends USR1 before the time limit (`--signal=B:USR1@SECONDS`); the batch shell's trap asks
  the run to checkpoint at the next step boundary (a stop file every rank watches, see sft/train/preemption.py),
  waits for it to exit cleanly, and requeues the job, which then resumes from the newest complete checkpoint.
"""

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import EXIT_STOPPED, UserError
from sft.io import write_atomic
from sft.launch.profiles import ACCELERATE_CONFIGS, PROFILES, ROOT, RUN_SCRIPT, applicable  # standard library only

# The batch script names a file here; the training processes stop at the next step boundary once it exists.
STOP_FILE_ENV = "SFT_STOP_FILE"
PORT_BASE, PORT_SPAN = 20000, 20000  # main process port = PORT_BASE + job id % PORT_SPAN


@dataclass
class SlurmJob:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU processes (gloo)
    processes_per_node: int | None = None  # default: gpus_per_node, or 1 on CPU
    profile: str | None = None  # accelerate_configs/NAME.yaml, a path to a config, or None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str | None = None
    output: str | None = None
    cpus_per_task: int | None = None
    sbatch_lines: list[str] = field(default_factory=list)  # extra `#SBATCH` options, e.g. "--mem=0"
    setup: list[str] = field(default_factory=list)  # shell lines before training, e.g. "module load cuda/12.4"
    signal_seconds: int = 300  # how long before the time limit Slurm warns (USR1)
    python: str = sys.executable
    workdir: str = field(default_factory=os.getcwd)

    @property
    def per_node(self) -> int:
        if self.processes_per_node is not None:
            return self.processes_per_node
        return self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.per_node


def profile_path(profile: str) -> Path:
    """A profile name (accelerate_configs/NAME.yaml) or a path to an accelerate config file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    named = ACCELERATE_CONFIGS / f"{profile}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))
    raise UserError(f"--profile {profile}: no such profile; choose one of {', '.join(known) or '(none installed)'} "
                    "or give the path to an accelerate config file")


def check_literal(option: str, value) -> None:
    """sbatch reads `#SBATCH` lines before any shell runs: a `$VAR` there is passed on verbatim, never expanded."""
    if value is not None and ("$" in str(value) or "`" in str(value)):
        raise UserError(f"{option} {value!r}: #SBATCH lines are never expanded by a shell; give the literal value "
                        "instead of a shell variable or command")


def check_job(job: SlurmJob) -> None:
    if job.nodes < 1:
        raise UserError(f"--nodes {job.nodes}: need at least 1 node")
    if job.gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {job.gpus_per_node}: must be 0 (CPU) or more")
    if job.per_node < 1:
        raise UserError(f"--processes-per-node {job.per_node}: need at least 1 process per node")
    if job.gpus_per_node and job.per_node > job.gpus_per_node:
        raise UserError(f"--processes-per-node {job.per_node} is more than --gpus-per-node {job.gpus_per_node}: "
                        "one process drives one GPU")
    if job.signal_seconds < 1:
        raise UserError(f"--signal-seconds {job.signal_seconds}: must be at least 1")
    for option in ("partition", "time", "account", "qos", "constraint", "job_name", "output"):
        check_literal(f"--{option.replace('_', '-')}", getattr(job, option))
    for line in job.sbatch_lines:
        check_literal("--sbatch", line)
    if job.profile and job.profile != "auto" and profile_path(job.profile).stem == "single_gpu" \
            and job.world_size > 1:
        raise UserError(f"--profile single_gpu runs one process but the job asks for {job.world_size} "
                        f"({job.nodes} node(s) x {job.per_node}); use multi_gpu or a zero* profile, or ask for "
                        "--nodes 1 --gpus-per-node 1")


def sbatch_option(line: str) -> str:
    """`--mem=0`, `mem=0` or `#SBATCH --mem=0` -> `--mem=0`."""
    line = line.strip()
    if line.startswith("#SBATCH"):
        line = line[len("#SBATCH"):].strip()
    if not line.startswith("-"):
        line = "--" + line
    return line


def environment_lines(python: str) -> list[str]:
    """Shell lines that recreate the Python environment `sft slurm` runs in (venv or conda), then pin PATH to it."""
    lines = []
    venv = os.environ.get("VIRTUAL_ENV")
    conda_prefix, conda_exe = os.environ.get("CONDA_PREFIX"), os.environ.get("CONDA_EXE")
    if venv and Path(venv, "bin", "activate").is_file():
        lines.append(f"source {shlex.quote(str(Path(venv, 'bin', 'activate')))}")
    elif conda_prefix and conda_exe:
        lines.append(f'eval "$({shlex.quote(conda_exe)} shell.bash hook)"')
        lines.append(f"conda activate {shlex.quote(conda_prefix)}")
    bin_dir = str(Path(python).parent)
    lines.append(f'export PATH={shlex.quote(bin_dir)}:"$PATH"')
    return lines


def launch_arguments(job: SlurmJob, profile: Path | None) -> list[str]:
    """`accelerate launch` arguments, literal ones quoted; `$SLURM_NODEID` and friends stay for the task's shell."""
    args = []
    if profile is not None:
        args += ["--config_file", shlex.quote(str(profile))]
        deepspeed_file = deepspeed_config_file(profile)
        if deepspeed_file:
            args += ["--deepspeed_config_file", shlex.quote(deepspeed_file)]
            if job.nodes > 1:
                # torchrun on each node, one world. accelerate's default (pdsh) runs DeepSpeed's own launcher on
                # every node, which finds no hostfile and trains there alone. The profiles say so too; a user's
                # own config may not.
                args += ["--deepspeed_multinode_launcher", "standard"]
    elif job.world_size > 1:
        args += ["--multi_gpu"]  # torchrun launcher; on CPU sft picks gloo itself
    if not job.gpus_per_node:
        args += ["--mixed_precision", "no"]  # CPU: float32 (profiles ask for bf16)
    args += ["--num_machines", str(job.nodes), "--num_processes", str(job.world_size),
             "--machine_rank", '"$SLURM_NODEID"',
             "--main_process_ip", '"$MAIN_HOST"', "--main_process_port", '"$MAIN_PORT"',
             "--rdzv_backend", "c10d"]
    return args


def deepspeed_config_file(profile: Path) -> str | None:
    """A profile names its DeepSpeed JSON relative to sft's profile folder; the job runs in the user's folder."""
    import yaml

    config = yaml.safe_load(Path(profile).read_text()) or {}
    name = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not name or Path(name).is_absolute():
        return name
    ours = ROOT / name
    return str(ours if ours.is_file() else (Path(profile).parent / name).resolve())


def recipe_argument(recipe: str) -> str:
    if recipe.startswith("hf://"):
        return recipe
    return str(Path(recipe).resolve())


def build_script(job: SlurmJob, command_line: str = "") -> str:
    """The sbatch script text."""
    check_job(job)
    profile = profile_path(job.profile) if job.profile else None
    name = job.job_name or "sft-" + Path(job.recipe.split("@")[0]).stem
    check_literal("--job-name", name)

    sbatch = [f"--job-name={name}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    if job.gpus_per_node:
        sbatch.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task:
        sbatch.append(f"--cpus-per-task={job.cpus_per_task}")
    for option in ("partition", "time", "account", "qos", "constraint", "output"):
        value = getattr(job, option)
        if value:
            sbatch.append(f"--{option}={value}")
    sbatch += [f"--chdir={job.workdir}", f"--signal=B:USR1@{job.signal_seconds}", "--requeue",
               "--open-mode=append"]
    sbatch += [sbatch_option(line) for line in job.sbatch_lines]

    training = [shlex.quote(recipe_argument(job.recipe)), *map(shlex.quote, job.overrides)]
    task = " ".join(["exec accelerate launch", *launch_arguments(job, profile),
                     shlex.quote(str(RUN_SCRIPT)), *training])

    lines = ["#!/bin/bash"]
    if command_line:
        lines.append(f"# Written by: {command_line}")
    lines += [
        "# Submit with `sbatch THIS_FILE`. Resubmitting, or the requeue after a preemption, resumes from the newest",
        "# complete checkpoint in output_dir (which must be on a filesystem every node shares).",
        *[f"#SBATCH {option}" for option in sbatch],
        "",
        "set -uo pipefail",
        "",
        "# The Python environment `sft slurm` ran in.",
        *environment_lines(job.python),
        *job.setup,
        "",
        "# Rendezvous: the first host of the allocation, a port derived from the job id.",
        'MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MAIN_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))",
        f'{STOP_FILE_ENV}="$PWD/.sft-stop-$SLURM_JOB_ID"',
        f"export MAIN_HOST MAIN_PORT {STOP_FILE_ENV}",
        f'rm -f "${STOP_FILE_ENV}"',
        'echo "sft: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
        'rendezvous $MAIN_HOST:$MAIN_PORT"',
        "",
        "# USR1 (time limit or preemption warning, asked for above): checkpoint at the next step, exit, requeue.",
        "# TERM (scancel, or Slurm's own preemption): checkpoint at the next step and exit.",
        "requeue=0",
        f'trap \'echo "sft: USR1: checkpointing, then requeueing"; requeue=1; touch "${STOP_FILE_ENV}"\' USR1',
        f'trap \'echo "sft: TERM: checkpointing, then stopping"; touch "${STOP_FILE_ENV}"\' TERM',
        "",
        "# One task per node. Single quotes: each task's own shell expands $SLURM_NODEID (its machine rank).",
        f"srun --nodes={job.nodes} --ntasks={job.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
        f"bash -c {shlex.quote(task)} &",
        "step=$!",
        "# A trapped signal interrupts `wait`; keep waiting until the training step has checkpointed and exited.",
        'wait "$step"; status=$?',
        'while kill -0 "$step" 2>/dev/null; do wait "$step"; status=$?; done',
        f'rm -f "${STOP_FILE_ENV}"',
        # A single process exits EXIT_STOPPED after a requested stop; a launcher's ranks exit 0.
        f'if [ "$requeue" = 1 ] && {{ [ "$status" = 0 ] || [ "$status" = {EXIT_STOPPED} ]; }}; then',
        '    echo "sft: requeueing job $SLURM_JOB_ID; it resumes from the newest complete checkpoint"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def write_script(text: str, path: Path) -> None:
    """Write whole or not at all."""
    write_atomic(path, text, mode=0o755)


def check_fit(job: SlurmJob, profile: str | None, gpu_memory: float | None, model_config: str | None = None):
    """Check the recipe before it waits in a queue, and pick or check the profile. Returns the profile to use.

    The recipe is read and validated here (bad keys fail now, not hours later on the cluster). A profile that
    cannot run the recipe's method at this world size is refused; with --gpu-memory the planner (sft/launch/plan.py)
    also refuses one whose estimate does not fit, and `--profile auto` takes its recommendation."""
    from sft.recipe.load import load_recipe

    recipe = load_recipe(job.recipe, job.overrides)
    if not job.gpus_per_node:
        named = PROFILES.get(profile_path(profile).stem) if profile not in (None, "auto") else None
        if named is not None and named.fsdp:
            raise UserError(f"--profile {named.name} with CPU processes: FSDP runs on GPUs only (accelerate ignores "
                            "its FSDP plugin on CPU); use --gpus-per-node, or the zero3 or zero3_qlora profile")
        return None if profile in (None, "auto") else profile
    if profile is None:
        profile = "auto" if gpu_memory is not None else ("multi_gpu" if job.world_size > 1 else "single_gpu")
    from sft.launch import plan

    where = f"{job.nodes} node(s) x {job.gpus_per_node} GPU(s)"
    if profile == "auto":
        if gpu_memory is None:
            raise UserError("--profile auto needs --gpu-memory GB (the planner picks the cheapest profile that "
                            "fits); or name one with --profile NAME")
        report = plan.make_plan(recipe, job.gpus_per_node, gpu_memory, nodes=job.nodes, model_config=model_config,
                                half=True, recipe_address=job.recipe)
        if report["recommended"] is None:
            raise UserError(f"{job.recipe} on {where} of {gpu_memory:g} GB: {plan.recommendation_advice(report)}")
        return report["recommended"]
    name = profile_path(profile).stem
    if name in PROFILES:
        why = applicable(PROFILES[name], recipe.sft.method, bool(recipe.model.load_in_8bit), job.world_size)
        if why:
            raise UserError(f"--profile {name} cannot run {job.recipe} on {where}: {why}; change the profile or the "
                            "GPU count (`sft plan` shows which fit)")
        if gpu_memory is not None:
            report = plan.make_plan(recipe, job.gpus_per_node, gpu_memory, nodes=job.nodes,
                                    model_config=model_config, half=True, recipe_address=job.recipe)
            entry = next(p for p in report["profiles"] if p["name"] == name)
            if not entry["fits"]:
                raise UserError(f"--profile {name}: {job.recipe} needs about {entry['per_gpu_bytes'] / 1e9:.1f} GB "
                                f"per GPU on {where}, more than {gpu_memory:g} GB allows; ask for more GPUs or "
                                f"nodes, or use --profile {report['recommended'] or 'auto'}"
                                + ("" if report["recommended"] else f" ({plan.recommendation_advice(report)})"))
    return profile
