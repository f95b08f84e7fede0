"""Every distributed profile trains, saves and resumes correctly: real `accelerate launch` runs, 2 CPU processes
over gloo, exactly as a user types them:

    accelerate launch --config_file accelerate_configs/NAME.yaml --num_processes 2 sft/run.py RECIPE

Two launches per profile prove its three claims. Run A trains 4 steps (global batch 4, checkpoints at steps 2
and 4): its first loss must equal a one-process run with the same global batch, and its saved model or adapter
must hold the weights its own last checkpoint gathers from the shards. Run B starts from what a run stopped after
step 2 leaves behind (output_dir holding checkpoint-2 only) and must continue at step 3 with A's losses.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CPU_OUTCOME, REPO, quickstart_rows, run_cli, write_recipe

pytestmark = [pytest.mark.slow, CPU_OUTCOME]

STEPS, SAVE_EVERY, PER_DEVICE, PROCESSES = 4, 2, 2, 2
# (profile, method, extra recipe keys, the line sft must print): DDP, ZeRO-1, ZeRO-2, ZeRO-3 full fine-tuning,
# ZeRO-3 + LoRA, ZeRO-3 + QLoRA. The last two start from settings known to fail under ZeRO-3 (trl#2514,
# alignment-handbook#42), which the check at the start of the run fixes.
CASES = [
    ("multi_gpu", "full", [], "2 processes over gloo"),
    ("zero1", "full", [], "2 processes over gloo"),
    ("zero2", "full", [], "2 processes over gloo"),
    ("zero3", "full", [], "2 processes over gloo"),
    ("zero3_offload", "full", [],
     "optimizer: the recipe's optim adamw_torch_fused, stepping on the CPU copy of the weights (optimizer offload)"),
    ("zero3", "lora", ["--gradient_checkpointing_kwargs", '{"use_reentrant": false}'],
     "gradient_checkpointing_kwargs.use_reentrant false -> true"),
    ("zero3_qlora", "qlora", ["--bnb_4bit_quant_storage", "uint8"], "bnb_4bit_quant_storage uint8 -> float32"),
]


@pytest.fixture(scope="module")
def base_recipe(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    quickstart_rows(folder / "train.jsonl", 16)
    return write_recipe(
        folder / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(folder / "train.jsonl"),
        output_dir=str(folder / "unused"), max_length=64, per_device_train_batch_size=PER_DEVICE,
        learning_rate=1.0e-3, lora_r=8, lora_alpha=16, max_steps=STEPS, logging_steps=1, save_strategy="steps",
        save_steps=SAVE_EVERY, seed=0, report_to="none",
    )


@pytest.fixture(scope="module")
def single_process_first_loss(base_recipe, tmp_path_factory):
    """method -> the first step's loss of one process with the same global batch (PROCESSES x PER_DEVICE).
    Full fine-tuning goes through `sft launch`, which picks accelerate_configs/single_gpu.yaml for one process."""
    from sft.run import train

    cache = {}

    def first_loss(method):
        if method in cache:
            return cache[method]
        out = tmp_path_factory.mktemp(f"single-{method}")
        overrides = ["--method", method, "--output_dir", str(out), "--max_steps", "1", "--save_steps", "1",
                     "--per_device_train_batch_size", str(PROCESSES * PER_DEVICE)]
        if method == "full":
            proc = run_cli("launch", base_recipe, *overrides, cwd=out)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "sft: profile single_gpu (cheapest that fits:" in proc.stderr
            assert "(mixed_precision bf16 from the accelerate config turned off)" in proc.stderr
        else:
            train(str(base_recipe), overrides)
        cache[method] = losses(out, step=1)[1]
        return cache[method]

    return first_loss


def launch(profile, recipe, method, output_dir, extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"accelerate_configs/{profile}.yaml",
           "--num_processes", str(PROCESSES), "sft/run.py", str(recipe), "--method", method,
           "--output_dir", str(output_dir), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def losses(output_dir, step=STEPS) -> dict[int, float]:
    state = json.loads((output_dir / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


def gathered_from_checkpoint(checkpoint):
    """The trained weights as the run's own checkpoint holds them: DeepSpeed's shards gathered to fp32, or the
    checkpoint's safetensors file without DeepSpeed."""
    from safetensors.torch import load_file

    if any(checkpoint.glob("global_step*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), exclude_frozen_parameters=True)
    name = "adapter_model.safetensors" if (checkpoint / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(checkpoint / name))


def adapter_key(name: str) -> str:
    """Run-time LoRA parameter name -> its name in adapter_model.safetensors."""
    return name.replace(".default", "")


def check_full_model_saved(run_dir, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(run_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # axolotl#705: nothing partial
    saved = model.state_dict()
    gathered = gathered_from_checkpoint(run_dir / f"checkpoint-{STEPS}")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert set(gathered) <= set(saved) and len(gathered) >= len(saved) - 1  # lm_head/embeddings may be tied
    for name, tensor in gathered.items():
        torch.testing.assert_close(saved[name], tensor.to(saved[name].dtype), rtol=0, atol=1e-6)
    assert any(not torch.equal(saved[n], initial[n]) for n in gathered)  # trained, not the initial weights


def check_adapter_saved(run_dir, tiny_model):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = run_dir / "adapter_model.safetensors"
    assert path.stat().st_size > 10_000  # trl#4416 saved 40 empty bytes under ZeRO-3
    adapter = load_file(str(path))
    assert len(adapter) == 2 * 7 * 2  # 2 blocks x 7 linear layers x (lora_A, lora_B)
    gathered = {adapter_key(k): v for k, v in gathered_from_checkpoint(run_dir / f"checkpoint-{STEPS}").items()}
    assert set(gathered) == set(adapter)
    for name, tensor in adapter.items():  # QLoRA adapters train in bf16 (TRL): the fp32 master, rounded
        torch.testing.assert_close(tensor.float(), gathered[name].to(tensor.dtype).float(), rtol=0, atol=1e-6)
    assert all(adapter[k].abs().sum() > 0 for k in adapter if "lora_B" in k)  # lora_B starts at zero: trained
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run_dir)
    loaded = {adapter_key(k): v for k, v in model.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(adapter)
    for name, tensor in adapter.items():
        torch.testing.assert_close(loaded[name].float(), tensor.float())


@pytest.mark.parametrize("profile, method, extra, said", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_profile_trains_saves_and_resumes(profile, method, extra, said, base_recipe, single_process_first_loss,
                                          tiny_model, tmp_path):
    # Trains: the first step's loss is the single-process loss with the same global batch.
    run_a = tmp_path / "uninterrupted"
    proc_a = launch(profile, base_recipe, method, run_a, extra)
    assert "2 processes over gloo" in proc_a.stderr and said in proc_a.stderr
    losses_a = losses(run_a)
    assert sorted(losses_a) == list(range(1, STEPS + 1))
    assert losses_a[1] == pytest.approx(single_process_first_loss(method), rel=1e-4)

    if profile == "zero3_offload":  # the recipe's optim ran (torch's fused AdamW), not DeepSpeed's CPU Adam
        import torch

        optim_file = next((run_a / f"checkpoint-{STEPS}").glob("global_step*/*rank_0_mp_rank_00_optim_states.pt"))
        saved = torch.load(optim_file, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert saved["optimizer_state_dict"]["param_groups"][0]["fused"] is True

    # Saves: the final model/adapter holds the weights gathered from the run's own last checkpoint.
    if method == "full":
        check_full_model_saved(run_a, tiny_model)
    else:
        check_adapter_saved(run_a, tiny_model)

    # Resumes: output_dir as a run stopped after step 2 leaves it; the same command continues at step 3.
    run_b = tmp_path / "resumed"
    run_b.mkdir()
    shutil.copytree(run_a / f"checkpoint-{SAVE_EVERY}", run_b / f"checkpoint-{SAVE_EVERY}")
    proc_b = launch(profile, base_recipe, method, run_b, extra)
    assert re.search(rf"resuming from \S*checkpoint-{SAVE_EVERY}\b", proc_b.stderr)
    printed = re.findall(r"'loss': '?([0-9.]+)", proc_b.stdout + proc_b.stderr)
    assert len(printed) == STEPS - SAVE_EVERY  # it logged steps 3 and 4 only: it did not start over
    losses_b = losses(run_b)
    for step in range(SAVE_EVERY + 1, STEPS + 1):
        assert losses_b[step] == pytest.approx(losses_a[step], rel=1e-5)
