"""Every distributed profile across two nodes, for real: the per-node command from the script `sft slurm --nodes 2`
writes, run as node 0 and node 1 on loopback (separate launches, one CPU process each over gloo, each with its own
machine rank). Both must exit 0 having trained one model together: the first step's loss equals a one-node run of
2 processes with the same global batch (a node training alone would see half the batch), an epoch advances at the
rate of one world of 2 ranks, and the model (or adapter) saved loads.

Without `deepspeed_multinode_launcher: standard` in a ZeRO profile, accelerate turns the per-node line into
`deepspeed --hostfile None --launcher pdsh`: node 0 trains alone and node 1 fails with EADDRINUSE.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import quickstart_rows, run_cli, write_recipe
from tests.support.loopback import run_nodes, srun_task

pytestmark = pytest.mark.slow

STEPS, PER_DEVICE, ROWS = 2, 2, 16
CASES = [("multi_gpu", "full"), ("zero1", "full"), ("zero2", "full"), ("zero3", "full"), ("zero3_qlora", "qlora")]
# The one-node reference per method: plain DDP for full fine-tuning; QLoRA's 4-bit base needs zero3_qlora's storage.
REFERENCE_PROFILE = {"full": "multi_gpu", "qlora": "zero3_qlora"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("multinode-data") / "train.jsonl"
    quickstart_rows(path, ROWS)
    return path


def make_recipe(folder: Path, tiny_model: Path, train_file: Path, method: str) -> Path:
    lora = {"lora_r": 8, "lora_alpha": 16} if method in ("lora", "qlora") else {}  # refused without a LoRA method
    return write_recipe(
        folder / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(train_file),
        output_dir=str(folder / "out"), method=method, **lora, max_length=64,
        per_device_train_batch_size=PER_DEVICE, learning_rate=1.0e-3, max_steps=STEPS, logging_steps=1,
        save_strategy="no", seed=0, report_to="none")


def per_node_command(recipe: Path, profile: str, nodes: int, processes_per_node: int) -> str:
    script = run_cli("slurm", recipe, "--nodes", str(nodes), "--cpu", "--processes-per-node",
                     str(processes_per_node), "--profile", profile, cwd=recipe.parent, check=True).stdout
    return srun_task(script)


def train_on_nodes(folder: Path, tiny_model, train_file, method, profile, nodes, processes_per_node) -> dict:
    """Run the script's per-node command as each node; returns the step records of out/metrics.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = make_recipe(folder, tiny_model, train_file, method)
    task = per_node_command(recipe, profile, nodes, processes_per_node)
    world = nodes * processes_per_node
    assert f"--num_machines {nodes} --num_processes {world} --machine_rank \"$SLURM_NODEID\"" in task
    result = run_nodes(task, folder, nodes, timeout=900)
    tails = "\n".join(f"--- node {n}:\n{log[-4000:]}" for n, log in enumerate(result["logs"]))
    assert result["returncodes"] == [0] * nodes, tails
    logs = "".join(result["logs"])
    assert f"{world} processes over gloo" in logs, tails  # the main process says it; the others train silently
    assert "local resources only" not in logs  # DeepSpeed's own launcher, falling back to one node
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


@pytest.fixture(scope="module")
def one_node_first_loss(tmp_path_factory, tiny_model, train_file):
    cache = {}

    def first_loss(method):
        if method not in cache:
            folder = tmp_path_factory.mktemp(f"one-node-{method}")
            steps = train_on_nodes(folder, tiny_model, train_file, method, REFERENCE_PROFILE[method], nodes=1,
                                   processes_per_node=2)
            cache[method] = steps[1]["loss"]
        return cache[method]

    return first_loss


def check_model_loads_and_trained(out: Path, tiny_model: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    saved = model.state_dict()
    assert set(saved) == set(initial)
    assert any(not torch.equal(saved[name], initial[name]) for name in saved)


def check_adapter_loads_and_trained(out: Path, tiny_model: Path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 7 * 2  # 2 blocks x 7 linear layers x (lora_A, lora_B): nothing empty (trl#4416)
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)  # lora_B starts at zero: trained
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(adapter)
    for name, tensor in adapter.items():
        torch.testing.assert_close(loaded[name].float(), tensor.float())


@pytest.mark.parametrize("profile, method", CASES, ids=[c[0] for c in CASES])
def test_two_nodes_train_one_model(profile, method, tiny_model, train_file, one_node_first_loss, tmp_path):
    steps = train_on_nodes(tmp_path, tiny_model, train_file, method, profile, nodes=2, processes_per_node=1)
    assert sorted(steps) == list(range(1, STEPS + 1))
    # One world of 2 ranks x 2 rows: each step is 4 of the 16 rows. A node alone would advance by 2.
    assert steps[1]["epoch"] == pytest.approx(2 * PER_DEVICE / ROWS)
    assert steps[1]["loss"] == pytest.approx(one_node_first_loss(method), rel=1e-4)
    out = tmp_path / "out"
    if method == "full":
        assert not (out / "adapter_model.safetensors").exists()
        check_model_loads_and_trained(out, tiny_model)
    else:
        assert not (out / "model.safetensors").exists()
        check_adapter_loads_and_trained(out, tiny_model)
