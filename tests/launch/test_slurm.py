"""`sft slurm` scripts, run on a real one-node Slurm cluster; preemption, requeue and resume; multi-node
rendezvous over loopback; checkpoints that are never resumed from when partial."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, write_recipe
from tests.support.loopback import run_nodes, srun_task
from tests.support.slurm_cluster import SlurmCluster, missing_tools

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = missing_tools()
    if missing:
        pytest.skip(f"Slurm tests need Debian's slurm-wlm and munge (missing: {', '.join(missing)}); "
                    "`apt-get install slurm-wlm munge` (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm cluster runs its daemons as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def tiny_recipe(folder: Path, model: Path, **values) -> Path:
    """12 chat rows; with 2 processes x batch 2 an epoch is 3 steps."""
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w.upper()}]}
            for w in WORDS]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = dict(model_name_or_path=str(model), dataset_name="data.jsonl", output_dir=str(folder / "out"),
                    max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, save_steps=2,
                    max_length=64, seed=0, report_to="none")
    settings.update(values)
    return write_recipe(folder / "recipe.yaml", **settings)


def losses(trainer_state: Path) -> dict[int, float]:
    history = json.loads(trainer_state.read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


# ---------------------------------------------------------------------------------------------------------------
# The script


def test_script_ranks_each_node_inside_its_task_and_keeps_sbatch_literal(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    proc = run_cli("slurm", recipe, "--learning_rate", "2e-3", "--nodes", "2", "--gpus-per-node", "4",
                   "--profile", "zero3", "--partition", "gpu", "--time", "2:00:00", "--account", "proj",
                   "--sbatch", "--mem=0", "--setup", "module load cuda", "--signal-seconds", "120",
                   "-o", tmp_path / "job.sbatch", cwd=tmp_path, env={"VIRTUAL_ENV": str(venv)}, check=True)
    assert "submit with: sbatch" in proc.stderr
    script = (tmp_path / "job.sbatch").read_text()
    sbatch = [li for li in script.splitlines() if li.startswith("#SBATCH")]
    assert "$" not in "".join(sbatch)
    for wanted in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu", "--time=2:00:00",
                   "--account=proj", "--mem=0", "--signal=B:USR1@120", "--requeue", f"--chdir={tmp_path}"):
        assert f"#SBATCH {wanted}" in sbatch
    assert f"source {venv / 'bin' / 'activate'}" in script and "module load cuda" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script

    # Each task's own shell expands its node id: run the task's command as two tasks would, with `echo` for
    # `accelerate launch`.
    task = srun_task(script)
    assert "$SLURM_NODEID" in task  # not expanded by the batch shell
    ranks = []
    for node in ("0", "1"):
        env = {**os.environ, "SLURM_NODEID": node, "MAIN_HOST": "node-a", "MAIN_PORT": "20042"}
        out = subprocess.run(["bash", "-c", task.replace("exec accelerate launch", "echo")], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        ranks.append(out[out.index("--machine_rank") + 1])
        assert out[out.index("--num_machines") + 1] == "2" and out[out.index("--num_processes") + 1] == "8"
        assert out[out.index("--main_process_ip") + 1] == "node-a"
        assert out[out.index("--rdzv_backend") + 1] == "c10d"
        assert out[out.index("--config_file") + 1] == str(REPO / "accelerate_configs" / "zero3.yaml")
        assert Path(out[out.index("--deepspeed_config_file") + 1]).is_file()
        assert out[out.index("--deepspeed_multinode_launcher") + 1] == "standard"  # else each node trains alone
        assert out[-3:] == [str(recipe.resolve()), "--learning_rate", "2e-3"]
    assert ranks == ["0", "1"]


def accelerate_launcher(task: str, node: int) -> tuple[list[str] | None, object]:
    """What accelerate's own launch code makes of a node's `accelerate launch` line: (the DeepSpeed launcher
    command it would run, or None for torchrun; the parsed arguments)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    env = {**os.environ, "SLURM_NODEID": str(node), "MAIN_HOST": "127.0.0.1", "MAIN_PORT": "1"}
    words = subprocess.run(["bash", "-c", task.replace("exec accelerate launch", "printf '%s\\n'")], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(words))
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ""  # set by accelerate's launch_command before this step
    cmd, _ = prepare_deepspeed_cmd_env(args)
    return cmd, args


def test_deepspeed_nodes_join_one_torchrun_world_even_with_a_users_own_config(tmp_path):
    """accelerate's default multi-node DeepSpeed launcher is pdsh: each node runs `deepspeed --hostfile None`, finds
    no hostfile and trains alone. The script asks for torchrun on every node, whatever the config says."""
    import yaml

    from sft.launch.slurm import SlurmJob, build_script

    config = yaml.safe_load((REPO / "accelerate_configs" / "zero3.yaml").read_text())
    del config["deepspeed_config"]["deepspeed_multinode_launcher"]  # a config written before this was known
    config["deepspeed_config"]["deepspeed_config_file"] = str(REPO / "deepspeed_configs" / "zero3.json")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    task = srun_task(build_script(SlurmJob("recipe.yaml", nodes=2, profile=str(tmp_path / "mine.yaml"))))
    cmd, args = accelerate_launcher(task, node=1)
    assert cmd is None and args.deepspeed_multinode_launcher == "standard"
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "1")
    # Without the flag, accelerate builds DeepSpeed's launcher, as it did before.
    cmd, _ = accelerate_launcher(task.replace("--deepspeed_multinode_launcher standard ", ""), node=1)
    assert cmd[:3] == ["deepspeed", "--hostfile", "None"] and "pdsh" in cmd
    one_node = srun_task(build_script(SlurmJob("recipe.yaml", nodes=1, processes_per_node=2, profile="zero3")))
    assert "--deepspeed_multinode_launcher" not in one_node  # one node: accelerate runs torchrun anyway


@pytest.mark.parametrize("args, message", [
    (["--partition", "$PARTITION"], "--partition '$PARTITION': #SBATCH lines are never expanded by a shell"),
    (["--sbatch", "--mem=${MEM}"], "--sbatch '--mem=${MEM}': #SBATCH lines are never expanded"),
    (["--profile", "nope"], "--profile nope: no such profile"),
])
def test_bad_requests_fail_with_one_line(tmp_path, tiny_model, args, message):
    recipe = tiny_recipe(tmp_path, tiny_model)
    proc = run_cli("slurm", recipe, "--nodes", "1", "--gpus-per-node", "2", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_fsdp_on_cpu_processes_is_refused_before_queueing(tmp_path, tiny_model):
    recipe = tiny_recipe(tmp_path, tiny_model)
    proc = run_cli("slurm", recipe, "--nodes", "2", "--cpu", "--profile", "fsdp2", "-o", tmp_path / "job.sbatch")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--profile fsdp2 with CPU processes: FSDP runs on GPUs only" in proc.stderr
    assert not (tmp_path / "job.sbatch").exists()


def test_a_70b_qlora_profile_that_cannot_fit_is_refused():
    recipe = REPO / "recipes" / "tiers" / "llama-3.1-70b-qlora-2x80gb.yaml"
    config = REPO / "recipes" / "tiers" / "configs" / "Llama-3.1-70B" / "config.json"
    if not config.is_file():
        pytest.skip("the 70B tier recipe ships with the launch profiles")
    one_gpu = run_cli("slurm", recipe, "--nodes", "1", "--gpus-per-node", "1", "--profile", "zero3_qlora")
    assert one_gpu.returncode == 2 and one_gpu.stderr.count("\n") == 1
    assert "--profile zero3_qlora cannot run" in one_gpu.stderr and "1 node(s) x 1 GPU(s)" in one_gpu.stderr
    small = run_cli("slurm", recipe, "--nodes", "1", "--gpus-per-node", "2", "--profile", "zero3_qlora",
                    "--gpu-memory", "16", "--model-config", config)
    assert small.returncode == 2 and small.stderr.count("\n") == 1
    assert "GB per GPU on 1 node(s) x 2 GPU(s), more than 16 GB" in small.stderr


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and the stop request, in one process


def test_partial_checkpoints_are_never_resumed_from(tmp_path):
    from types import SimpleNamespace

    from sft.train.checkpoints import COMPLETE_MARKER, complete_checkpoints, resume_checkpoint

    out = tmp_path / "out"
    for step in (2, 4, 6):
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "checkpoint-2" / COMPLETE_MARKER).write_text("{}")
    (out / "checkpoint-4" / COMPLETE_MARKER).write_text("{}")
    (out / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # killed while saving
    assert complete_checkpoints(out) == [out / "checkpoint-2", out / "checkpoint-4"]
    recipe = SimpleNamespace(training=SimpleNamespace(resume_from_checkpoint=None, output_dir=str(out)),
                             sft=SimpleNamespace(resume=True))
    assert resume_checkpoint(recipe) == (str(out / "checkpoint-4"), [])


def test_old_checkpoints_are_deleted_only_after_the_new_one_is_marked_complete(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from sft.train.checkpoints import COMPLETE_MARKER, complete_checkpoints
    from sft.train.preemption import MarkCompleteCheckpoints

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_total_limit=2)
    marker = MarkCompleteCheckpoints()
    marker.on_train_begin(args, TrainerState(), TrainerControl())
    assert args.save_total_limit is None  # the Trainer's own rotation (before the marker) is off
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        assert complete_checkpoints(tmp_path)[-1:] != [tmp_path / f"checkpoint-{step}"]  # saved, not yet marked
        marker.on_save(args, TrainerState(global_step=step), TrainerControl())
        record = json.loads((tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).read_text())
        assert record["global_step"] == step and record["files"]["trainer_state.json"][0] == 2  # each file's size
        time.sleep(0.02)  # rotation orders by modification time, as the Trainer's does
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-4", tmp_path / "checkpoint-6"]
    marker.on_train_end(args, TrainerState(), TrainerControl())
    assert args.save_total_limit == 2


def test_stop_request_saves_and_stops_at_the_next_step(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from sft.train.preemption import StopOnRequest

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    for how in ("SIGUSR1", "SIGTERM", "file"):
        stop = StopOnRequest(stop_file=str(tmp_path / "stop"))
        before = signal.getsignal(signal.SIGUSR1)
        stop.on_train_begin(args, TrainerState(), TrainerControl())
        state, control = TrainerState(global_step=7), TrainerControl()
        stop.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop and stop.stopped_at is None
        if how == "file":
            (tmp_path / "stop").touch()
        else:
            os.kill(os.getpid(), getattr(signal, how))  # handled: only a flag is set, the process lives on
        state.global_step = 8
        stop.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and stop.stopped_at == 8, how
        stop.on_train_end(args, state, control)
        assert signal.getsignal(signal.SIGUSR1) == before
        (tmp_path / "stop").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# For real: Slurm, and two machine ranks on loopback


FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
STEPS = 150  # long enough that Slurm's signal lands mid-run; 3 steps per epoch


@pytest.fixture(scope="module")
def loopback_run(tmp_path_factory, tiny_model):
    """The script's per-node command, run twice with SLURM_NODEID 0 and 1 (one process each), rendezvous over
    c10d on loopback. Also the uninterrupted reference for the preemption test (same world size and batches)."""
    folder = tmp_path_factory.mktemp("loopback")
    recipe = tiny_recipe(folder, tiny_model, max_steps=STEPS, save_steps=STEPS)
    script = run_cli("slurm", recipe, "--nodes", "2", "--cpu", check=True, cwd=folder).stdout
    task = srun_task(script)
    return {"folder": folder, "task": task, **run_nodes(task, folder, nodes=2, timeout=300)}


@pytest.mark.slow
def test_two_machine_ranks_on_loopback_train_one_model(loopback_run, tiny_model):
    """One model trained by two ranks: an epoch takes 3 steps of 2 x 2 rows, not 6 as one process alone would."""
    logs = loopback_run["logs"]
    assert loopback_run["returncodes"] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert '--num_machines 2 --num_processes 2 --machine_rank "$SLURM_NODEID"' in loopback_run["task"]
    assert "2 processes over gloo" in logs[0] + logs[1]
    out = loopback_run["folder"] / "out"
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS and state["epoch"] == pytest.approx(STEPS / 3)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() == AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()


@pytest.mark.slow
def test_slurm_job_is_preempted_requeued_and_resumes_where_it_stopped(slurm, loopback_run, tmp_path, tiny_model):
    """2 CPU processes under `sft slurm`'s script. Slurm's warning signal (USR1 to the batch shell) arrives
    mid-run: the job checkpoints at the next step, requeues itself, and resumes from that checkpoint (not from a
    partial one left next to it), and its losses equal an uninterrupted run's step for step."""
    steps = STEPS
    recipe = tiny_recipe(tmp_path, tiny_model, max_steps=steps, save_steps=25)
    run_cli("slurm", recipe, "--nodes", "1", "--cpu", "--processes-per-node", "2", "-o", tmp_path / "job.sbatch",
            cwd=tmp_path, check=True)
    job = slurm.submit(tmp_path / "job.sbatch", cwd=tmp_path)
    log = tmp_path / f"slurm-{job}.out"
    out = tmp_path / "out"

    deadline = time.time() + 180
    while not (out / "checkpoint-25" / "sft-complete.json").is_file():
        assert time.time() < deadline and slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), \
            log.read_text(errors="replace")[-3000:] if log.exists() else slurm.job(job)
        time.sleep(0.2)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    info = slurm.wait_for(job, lambda j: int(j.get("Restarts", 0)) >= 1, timeout=120)
    text = log.read_text(errors="replace")
    assert "sft: USR1: checkpointing, then requeueing" in text
    stopped = int(text.split("stopped on request at step ")[1].split(":")[0])
    assert 25 < stopped < steps
    assert (out / f"checkpoint-{stopped}" / "sft-complete.json").is_file()
    assert not (out / "model.safetensors").exists()  # not saved as finished

    # A save that was killed halfway, newer than the stop checkpoint: never resumed from.
    partial = out / f"checkpoint-{stopped + 1}"
    shutil.copytree(out / f"checkpoint-{stopped}", partial)
    (partial / "sft-complete.json").unlink()
    (partial / "model.safetensors").write_bytes(b"\0" * 16)

    info = slurm.wait_for(job, lambda j: j["JobState"] in ("PENDING", "RUNNING", *FINISHED), timeout=60)
    if info["JobState"] == "PENDING":
        # Skip Slurm's requeue delay, but not entirely: slurmd refuses to launch a job id whose new start time is
        # not later (in whole seconds) than the revocation of its previous credential ("credential revoked").
        time.sleep(3)
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = slurm.wait_for(job, lambda j: j["JobState"] in FINISHED, timeout=240)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", f"{info}\n{text[-4000:]}"
    assert f"resuming from {out / f'checkpoint-{stopped}'} " in text
    assert "(restart 1)" in text
    final = json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert final["global_step"] == steps

    # Uninterrupted, the same 2 ranks and batches (the loopback run).
    assert loopback_run["returncodes"] == [0, 0]
    expected = losses(loopback_run["folder"] / "out" / f"checkpoint-{steps}" / "trainer_state.json")
    got = losses(out / f"checkpoint-{steps}" / "trainer_state.json")
    assert sorted(got) == list(range(1, steps + 1))
    assert [got[s] for s in got] == pytest.approx([expected[s] for s in got], rel=1e-5)  # before and after

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() == AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()
