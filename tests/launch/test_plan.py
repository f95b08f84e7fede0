"""The memory planner: exact parameter counts from a config, published figures, and bytes held after a real step."""

import json

import pytest

from tests.conftest import REPO, run_cli, write_recipe

TIERS = REPO / "recipes" / "tiers"


def recipe_for(tmp_path, model, **values):
    values = {"model_name_or_path": str(model), "dataset_name": str(tmp_path / "data.jsonl"),
              "output_dir": str(tmp_path / "out"), "report_to": "none", **values}
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Uppercase: word{i}", "output": f"WORD{i}"}) + "\n" for i in range(8)))
    return write_recipe(tmp_path / "recipe.yaml", **values)


# ---------------------------------------------------------------------------------------------------------------
# Published figures


@pytest.mark.parametrize("stage, expected_gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_7_5b_on_64_gpus(stage, expected_gb):
    from sft.launch.memory import GB, zero_model_states

    assert round(sum(zero_model_states(7.5e9, 64, stage).values()) / GB, 1) == expected_gb


def test_llama_3_1_8b_counted_exactly_and_zero_states_on_8_gpus():
    from sft.launch.memory import GB, count_parameters, load_config, zero_model_states

    count = count_parameters(load_config(str(TIERS / "configs" / "Llama-3.1-8B" / "config.json")))
    assert count.total == 8_030_261_248  # the published parameter count of Llama-3.1-8B
    assert count.embedding == count.lm_head == 128256 * 4096  # untied
    states = [round(sum(zero_model_states(count.total, 8, s).values()) / GB, 1) for s in (1, 2, 3)]
    assert states == [44.2, 30.1, 16.1]


def test_qlora_weights_are_4_127_bits_per_quantized_parameter_and_16_bit_elsewhere():
    from sft.launch.memory import NF4_BITS, Setup, base_weight_bytes, count_parameters, load_config

    count = count_parameters(load_config(str(TIERS / "configs" / "Llama-3.1-70B" / "config.json")))
    assert count.total == 70_553_706_496  # published count of Llama-3.1-70B
    setup = Setup("qlora", False, True, 2, None, 1, 1024, True, None)
    unquantized = count.total - count.linear
    assert unquantized >= count.embedding + count.lm_head  # embeddings and lm_head are not quantized
    bits = (base_weight_bytes(count, setup, deepspeed=True) - 2 * unquantized) * 8 / count.linear
    assert round(NF4_BITS, 3) == 4.127 and bits == pytest.approx(4.127, abs=5e-4)


# ---------------------------------------------------------------------------------------------------------------
# Against bytes actually held after one optimizer step (CPU, fp32, one process)


def held_after_one_step(recipe) -> int:
    """Bytes of parameters, gradients and optimizer state right after the first optimizer step of a real run."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from sft.model import load_model, load_tokenizer, peft_config

    tokenizer = load_tokenizer(recipe)
    model = load_model(recipe, tokenizer, [])
    held = {}

    class Measure(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            params = list(trainer.model.parameters())
            held["params"] = sum(p.numel() * p.element_size() for p in params)
            held["grads"] = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            held["optimizer"] = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values()
                                    for t in s.values() if torch.is_tensor(t) and t.dim() > 0)

    rows = Dataset.from_list([{"text": "hello world, the model learns"}] * 4)
    trainer = SFTTrainer(model=model, args=recipe.training, train_dataset=rows, processing_class=tokenizer,
                         peft_config=peft_config(recipe), callbacks=[Measure()])
    trainer.train()
    assert held["grads"] > 0 and held["optimizer"] > 0
    return sum(held.values())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_model_states_within_1_percent_of_a_real_step(tiny_model, tmp_path, method):
    from sft.launch.plan import make_plan
    from sft.recipe.load import load_recipe

    lora = {"lora_r": 8} if method == "lora" else {}  # a LoRA key without a LoRA method is refused
    recipe = load_recipe(str(recipe_for(tmp_path, tiny_model, method=method, max_steps=1, **lora,
                                        per_device_train_batch_size=2, save_strategy="no")))
    plan = make_plan(recipe, gpus=1, gpu_memory_gb=80, half=False)  # this machine: fp32, one process
    single = next(p for p in plan["profiles"] if p["name"] == "single_gpu")
    predicted = sum(single["breakdown"][k] for k in ("weights", "lora", "gradients", "optimizer_states"))
    measured = held_after_one_step(recipe)
    assert predicted == pytest.approx(measured, rel=0.01)
    if method == "lora":
        assert single["breakdown"]["lora"] > 0 and plan["model"]["lora_parameters"] > 0


# ---------------------------------------------------------------------------------------------------------------
# The command


def test_plan_json_lists_every_profile_and_recommends_the_cheapest_that_fits(tiny_model, tmp_path):
    recipe = recipe_for(tmp_path, tiny_model, method="full", max_length=64)
    proc = run_cli("plan", recipe, "--gpus", "2", "--gpu-memory", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    names = [p["name"] for p in plan["profiles"]]
    assert names == ["single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "zero3_qlora", "zero3_offload", "fsdp2",
                     "fsdp2_qlora"]
    by_name = {p["name"]: p for p in plan["profiles"]}
    assert not any(by_name[name]["applicable"] for name in ("single_gpu", "zero3_qlora", "fsdp2_qlora"))
    assert plan["recommended"] == "multi_gpu"  # a tiny model fits everywhere: DDP is the cheapest on 2 GPUs
    assert plan["command"].startswith("accelerate launch --config_file ")
    assert "multi_gpu.yaml --num_processes 2 " in plan["command"] and plan["command"].endswith(str(recipe))
    for p in plan["profiles"]:
        if p["applicable"]:
            assert p["fits"] and p["per_gpu_bytes"] == pytest.approx(sum(p["breakdown"].values()), abs=10)
    # ZeRO partitions what the paper says it does: 16-bit weights (2 B), gradients (2 B), fp32 master + Adam (12 B)
    n = plan["model"]["parameters"]
    zero1, zero2, zero3 = (by_name[name]["breakdown"] for name in ("zero1", "zero2", "zero3"))
    assert (zero1["weights"], zero1["gradients"], zero1["optimizer_states"]) == (2 * n, 2 * n, 12 * n // 2)
    # FSDP2 under bf16: fp32 sharded parameters (the master copy), fp32 gradients, two fp32 moments: ZeRO-3's 16 B
    fsdp2 = by_name["fsdp2"]["breakdown"]
    assert (fsdp2["weights"], fsdp2["gradients"], fsdp2["optimizer_states"]) == (4 * n // 2, 4 * n // 2, 8 * n // 2)
    assert by_name["fsdp2"]["per_gpu_bytes"] == by_name["zero3"]["per_gpu_bytes"]
    assert (zero2["weights"], zero2["gradients"], zero2["optimizer_states"]) == (2 * n, 2 * n // 2, 12 * n // 2)
    assert (zero3["weights"], zero3["gradients"], zero3["optimizer_states"]) == (2 * n // 2, 2 * n // 2, 12 * n // 2)
    assert by_name["multi_gpu"]["breakdown"]["weights"] == 4 * n  # fp32 weights as loaded (dtype float32)
    assert by_name["zero3_offload"]["breakdown"]["optimizer_states"] == 0
    assert by_name["zero3_offload"]["host_bytes_per_node"] == 16 * n


def test_plan_text_and_bad_input(tiny_model, tmp_path):
    recipe = recipe_for(tmp_path, tiny_model, method="full", max_length=64)
    proc = run_cli("plan", recipe, "--gpus", "1", "--gpu-memory", "24", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "recommended: single_gpu" in proc.stdout
    assert f"accelerate launch --config_file accelerate_configs/single_gpu.yaml --num_processes 1 sft/run.py " \
           f"{recipe}" in proc.stdout
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│ ")}
    assert rows["zero2"].rstrip(" │").endswith("n/a: needs more than one process")
    assert rows["single_gpu"].rstrip(" │").endswith("yes")

    from sft.errors import UserError
    from sft.launch.plan import make_plan
    from sft.recipe.load import load_recipe

    with pytest.raises(UserError, match="^--gpus and --nodes must be at least 1$"):
        make_plan(load_recipe(str(recipe)), gpus=0, gpu_memory_gb=24)


def test_multi_node_command_names_every_value_each_node_needs(monkeypatch):
    from sft.launch.plan import launch_command

    monkeypatch.chdir(REPO)
    assert launch_command("zero3", "r.yaml", processes=16, nodes=2) == (
        "accelerate launch --config_file accelerate_configs/zero3.yaml --num_processes 16 --num_machines 2 "
        "--machine_rank NODE_RANK --main_process_ip NODE0_ADDRESS --main_process_port 29500 sft/run.py r.yaml")


# ---------------------------------------------------------------------------------------------------------------
# The tier recipes, offline: the models' real config.json in a local Hub cache, no weights


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory) -> dict:
    """A Hugging Face cache holding meta-llama/Llama-3.1-{8B,70B} as the Hub would: the published config.json and,
    clearly labelled, a STAND-IN tokenizer built locally (the real one is gated and cannot be downloaded here)."""
    from sft.tiny import build_tokenizer

    home = tmp_path_factory.mktemp("hf-home")
    for size in ("8B", "70B"):
        repo = home / "hub" / f"models--meta-llama--Llama-3.1-{size}"
        snapshot = repo / "snapshots" / "0000000000000000000000000000000000000000"
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(snapshot.name)
        (snapshot / "config.json").write_text((TIERS / "configs" / f"Llama-3.1-{size}" / "config.json").read_text())
        build_tokenizer("char").save_pretrained(snapshot)
        (snapshot / "README.md").write_text("STAND-IN: sft's test character tokenizer, not Llama's; config.json is "
                                            "the published one. Built by tests/test_plan.py for offline tests.\n")
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}


# One process runs the real `sft check` and `sft plan` (no --model-config) on every tier recipe: the Hub names
# resolve from the offline cache above, as they would from a user's cache after a download.
TIER_COMMANDS = """
import json, sys
from click.testing import CliRunner
from sft.cli import cli
for recipe, gpus, memory in json.loads(sys.argv[1]):
    for args in (["check", recipe], ["plan", recipe, "--gpus", gpus, "--gpu-memory", memory, "--json"]):
        result = CliRunner().invoke(cli, args)
        print(json.dumps({"args": args, "exit": result.exit_code, "stdout": result.stdout}))
"""
TIER_HARDWARE = {"llama-3.1-8b-qlora-1x24gb": ("1", "24"), "llama-3.1-8b-full-8xa100-80gb": ("8", "80"),
                 "llama-3.1-70b-qlora-8xa100-80gb": ("8", "80"), "llama-3.1-70b-qlora-2x80gb": ("2", "80")}


def test_tier_recipes_pass_check_and_plan_offline(offline_hub, tmp_path):
    import os
    import subprocess
    import sys

    cases = [[str(TIERS / f"{name}.yaml"), *hw] for name, hw in TIER_HARDWARE.items()]
    assert {p.stem for p in TIERS.glob("*.yaml")} == set(TIER_HARDWARE)
    proc = subprocess.run([sys.executable, "-c", TIER_COMMANDS, json.dumps(cases)], cwd=tmp_path, text=True,
                          capture_output=True, env={**os.environ, **offline_hub}, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 2 * len(cases)
    for result in results:
        assert result["exit"] == 0, result
        if result["args"][0] == "check":
            assert result["stdout"].rstrip().endswith("OK: the run would start.")
            continue
        plan = json.loads(result["stdout"])
        assert plan["recommended"] is not None and plan["command"].startswith("accelerate launch --config_file ")
        assert plan["model"]["parameters"] in (8_030_261_248, 70_553_706_496)  # counted from the cached config
        if "8b-qlora" in plan["recipe"]:
            assert plan["model"]["lora_parameters"] == 41_943_040  # what PEFT reports for r=16 on every linear
            assert plan["recommended"] == "single_gpu"


# GB per GPU of the recommended profile: the same on this CPU machine as on the GPUs it plans for (the recipe's
# bfloat16, not the float32 a CPU run would load).
@pytest.mark.parametrize("recipe, size, gpus, memory, recommended, also_fits, recommended_gb", [
    ("llama-3.1-8b-full-8xa100-80gb", "8B", 8, 80, "zero1", {"zero2", "zero3", "zero3_offload", "fsdp2"}, 62.5),
    ("llama-3.1-8b-full-8xa100-80gb", "8B", 8, 40, "zero3", {"zero3_offload", "fsdp2"}, 32.6),
    ("llama-3.1-70b-qlora-8xa100-80gb", "70B", 8, 80, "multi_gpu", {"zero3_qlora", "fsdp2_qlora"}, 52.3),
    ("llama-3.1-70b-qlora-2x80gb", "70B", 2, 80, "multi_gpu", {"zero3_qlora", "fsdp2_qlora"}, 52.3),
    ("llama-3.1-70b-qlora-2x80gb", "70B", 2, 40, "zero3_qlora", {"fsdp2_qlora"}, 31.5),
])
def test_tier_recipes_plan(recipe, size, gpus, memory, recommended, also_fits, recommended_gb):
    from sft.launch.plan import make_plan
    from sft.recipe.load import load_recipe

    config = str(TIERS / "configs" / f"Llama-3.1-{size}" / "config.json")
    plan = make_plan(load_recipe(str(TIERS / f"{recipe}.yaml")), gpus, memory, model_config=config)
    assert plan["recommended"] == recommended
    estimates = {p["name"]: p["per_gpu_bytes"] / 1e9 for p in plan["profiles"]}
    assert estimates[recommended] == pytest.approx(recommended_gb, abs=0.05)
    if recipe == "llama-3.1-8b-full-8xa100-80gb":
        assert estimates["multi_gpu"] == pytest.approx(84.6, abs=0.05)  # 16-bit weights: DDP does not fit 80 GB
    fitting = {p["name"] for p in plan["profiles"] if p["applicable"] and p["fits"]}
    assert fitting == {recommended} | also_fits
    for p in plan["profiles"]:
        if p["applicable"]:
            assert p["fits"] == (p["per_gpu_bytes"] <= 0.9 * memory * 1e9)
