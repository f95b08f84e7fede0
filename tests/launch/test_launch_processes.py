"""`sft launch` with several processes behaves as one process does: a bad input or a missing DeepSpeed is one
line and exit 2, a Ctrl-C checkpoints every rank and exits 130, and the threads cannot oversubscribe the cores.
Real `sft launch` / `accelerate launch` runs of 2 CPU processes over gloo."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import REPO, run_cli
from tests.launch.test_profiles import recipe_file


def without_deepspeed(tmp_path) -> dict:
    """An environment in which `import deepspeed` fails, as after the quickstart install (sitecustomize runs in
    every Python process started with it)."""
    shim = tmp_path / "no-deepspeed"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text('import sys\nsys.modules["deepspeed"] = None\n')
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH")) if p)}


def test_a_deepspeed_profile_without_deepspeed_is_one_line_naming_the_install(tmp_path, tiny_model):
    recipe = recipe_file(tmp_path, tiny_model, max_steps=1)
    env = without_deepspeed(tmp_path)
    for extra in (["--dry-run"], []):
        proc = run_cli("launch", recipe, "--profile", "zero3", "--num-processes", "2", *extra, env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines() == [
            'error: profile zero3 needs DeepSpeed, which is not installed; install it after torch with: '
            'pip install -c constraints.txt --no-build-isolation -e ".[deepspeed]"']
        assert not (tmp_path / "out").exists()


def test_a_cpu_run_picks_threads_that_cannot_oversubscribe_and_says_so_first(tmp_path, tiny_model):
    import psutil

    recipe = recipe_file(tmp_path, tiny_model, max_steps=1, save_strategy="no")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's default: one per logical CPU
    proc = subprocess.run([sys.executable, "-m", "sft.cli", "train", str(recipe)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cores = min(psutil.cpu_count(logical=False), len(os.sched_getaffinity(0)))
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sft: ")]
    assert f"sft: CPU threads: {cores} per process ({cores} physical cores available; set OMP_NUM_THREADS to " \
           "choose)" in lines[:3], lines

    # another output_dir: `check` refuses the finished run above, as train would
    proc = subprocess.run([sys.executable, "-m", "sft.cli", "check", str(recipe), "--output_dir", str(tmp_path / "o2")],
                          env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert "CPU threads: 1 per process (OMP_NUM_THREADS=1; set OMP_NUM_THREADS to choose)" in proc.stdout, proc.stdout


def bad_row_recipe(tmp_path, tiny_model):
    recipe = recipe_file(tmp_path, tiny_model, max_steps=1, save_strategy="no")
    with open(tmp_path / "data.jsonl", "a") as data:  # line 9: what a careless edit leaves
        data.write(json.dumps({"instruction": "Uppercase: word9", "output": "  "}) + "\n")
    return recipe


LINE_9 = ("error: {}:9: 'output' is missing or empty; fix the data or set skip_bad_rows: true to skip and count such "
          "rows")


def test_bad_input_under_two_processes_is_one_line_and_exit_2(tmp_path, tiny_model):
    import socket

    recipe = bad_row_recipe(tmp_path, tiny_model)
    with socket.socket() as busy:  # accelerate's default port taken by another run: no warning line either
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", 29500))
            busy.listen()
        except OSError:
            pass  # already taken
        proc = run_cli("launch", recipe, "--num-processes", "2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if not line.startswith("sft: ")] == [LINE_9.format(tmp_path / "data.jsonl")], lines
    assert not (tmp_path / "out").exists()

    # plain accelerate launch: torch-elastic still reports the failed ranks, but the line is printed once
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "accelerate_configs" / "multi_gpu.yaml"), "--num_processes", "2",
                           str(REPO / "sft" / "run.py"), str(recipe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") == 1, proc.stderr[-3000:]


def test_a_ctrl_c_to_the_launcher_checkpoints_every_rank_and_exits_130(tmp_path, tiny_model):
    import psutil

    recipe = recipe_file(tmp_path, tiny_model, max_steps=10_000, save_strategy="no", logging_steps=1)
    launcher = subprocess.Popen([sys.executable, "-m", "sft.cli", "launch", str(recipe), "--num-processes", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "out" / "recipe.yaml").exists():  # written once every input is checked
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.5)
    time.sleep(2)
    agent = psutil.Process(launcher.pid).children()[0]  # accelerate (torch-elastic), whose children are the ranks
    ranks = agent.children()
    assert len(ranks) == 2
    launcher.send_signal(signal.SIGINT)  # the launcher's pid alone, as `kill -INT PID` does
    out, err = launcher.communicate(timeout=300)

    assert launcher.returncode == 130, err[-3000:]
    stopped = re.findall(r"^sft: interrupted \(Ctrl-C\) at step (\d+): checkpoint-\1 saved in ", err, re.M)
    assert len(stopped) == 1, err[-3000:]
    checkpoint = tmp_path / "out" / f"checkpoint-{stopped[0]}"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    assert "Traceback" not in err and "ChildFailedError" not in err and "Aborted" not in err
    assert not [r for r in ranks if r.is_running() and r.status() != psutil.STATUS_ZOMBIE]


def test_a_two_process_run_leaves_no_scratch_and_sweeps_what_killed_runs_left(tmp_path, tiny_model):
    cache = tmp_path / "cache"
    env = {"SFT_CACHE_DIR": str(cache)}
    # a run SIGKILLed after it made its scratch folder, as the OOM killer does
    script = ("from sft.masks.cache import scratch_file; import time; open(scratch_file('rows'), 'w').write('x'); "
              "print('ready', flush=True); time.sleep(600)")
    killed = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **env}, stdout=subprocess.PIPE,
                              text=True)
    assert killed.stdout.readline() == "ready\n"
    killed.kill()
    killed.wait()
    left = list((cache / "scratch").iterdir())
    assert len(left) == 1 and any(left[0].iterdir())
    live = cache / "scratch" / f"run-{socket.gethostname()}-{os.getpid()}-live"  # this process's: kept
    live.mkdir()

    recipe = recipe_file(tmp_path, tiny_model, max_steps=1, save_strategy="no")
    proc = run_cli("launch", recipe, "--num-processes", "2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert list((cache / "scratch").iterdir()) == [live]  # no shared-*, run-* of this run, none of the killed one


def test_torchs_collective_deprecations_are_silenced_and_other_warnings_are_not(tmp_path):
    """What ZeRO-3 calls ~40 times a step, here in a one-process gloo group, the warning re-armed between calls by
    a filter change as libraries make them during a step."""
    script = """
import warnings, torch, torch.distributed as dist
from sft.console import quiet_library_noise
quiet_library_noise()
dist.init_process_group("gloo", init_method="file://{store}", rank=0, world_size=1)
for _ in range(3):
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # re-arms warnings already shown, as libraries' catch_warnings do
    dist.reduce_scatter_tensor(torch.zeros(2), torch.ones(2))
    dist.all_gather_into_tensor(torch.zeros(2), torch.ones(2))
warnings.warn("sft's own notice", FutureWarning)
dist.destroy_process_group()
""".format(store=tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reduce_scatter_tensor" not in proc.stderr and "all_gather_into_tensor" not in proc.stderr, proc.stderr
    assert "FutureWarning: sft's own notice" in proc.stderr
