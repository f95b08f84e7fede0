"""Launch profiles: the files themselves, the refuse-or-fix checks, and `sft launch`."""

import json

import pytest
import yaml

from tests.conftest import CPU_OUTCOME, REPO, run_cli, run_cli_in_process, write_recipe


def recipe_file(tmp_path, tiny_model, **values):
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"instruction": f"Uppercase: word{i}", "output": f"WORD{i}"}) + "\n" for i in range(8)))
    values = {"model_name_or_path": str(tiny_model), "dataset_name": str(tmp_path / "data.jsonl"),
              "output_dir": str(tmp_path / "out"), "report_to": "none", "max_length": 64, **values}
    return write_recipe(tmp_path / "recipe.yaml", **values)


def load(tmp_path, tiny_model, **values):
    from sft.recipe.load import load_recipe

    return load_recipe(str(recipe_file(tmp_path, tiny_model, **values)))


# ---------------------------------------------------------------------------------------------------------------
# The files


def test_every_profile_has_a_config_and_deepspeed_leaves_batch_sizes_to_the_recipe():
    from sft.launch.profiles import PROFILES

    assert {p.stem for p in (REPO / "accelerate_configs").glob("*.yaml")} == set(PROFILES)
    for name, profile in PROFILES.items():
        config = yaml.safe_load(profile.config_file.read_text())
        assert config["num_machines"] == 1 and config["machine_rank"] == 0
        if profile.fsdp:
            assert config["distributed_type"] == "FSDP" and config["mixed_precision"] == "bf16"
            fsdp = config["fsdp_config"]
            assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
            assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # one model file, as zero3 saves
            continue
        if profile.zero_stage is None:
            assert config["distributed_type"] == ("NO" if name == "single_gpu" else "MULTI_GPU")
            assert config["mixed_precision"] == "bf16"
            continue
        assert config["distributed_type"] == "DEEPSPEED"
        # accelerate refuses mixed_precision beside a DeepSpeed file: precision is the recipe's ("auto")
        assert "mixed_precision" not in config
        assert config["deepspeed_config"]["deepspeed_config_file"] == profile.deepspeed_config
        assert config["deepspeed_config"]["zero3_init_flag"] is (profile.zero_stage == 3)
        # torchrun on every node: accelerate's default runs DeepSpeed's pdsh launcher on each, and each trains alone
        assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
        ds = json.loads((REPO / profile.deepspeed_config).read_text())
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping"):
            assert ds[key] == "auto", (name, key)
        assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
        assert ds["zero_optimization"]["stage"] == profile.zero_stage
        if profile.zero_stage == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # one model file
        assert ("offload_param" in ds["zero_optimization"]) is profile.offload


def test_a_bf16_accelerate_config_runs_in_float32_on_cpu(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `mixed_precision: bf16` in a profile sets
    recipe = load(tmp_path, tiny_model)
    assert recipe.training.mixed_precision == "no" and not recipe.training.bf16
    assert any("mixed_precision bf16 from the accelerate config turned off" in n for n in recipe.notes)


@CPU_OUTCOME
def test_a_16_bit_recipe_trains_in_float32_on_cpu(tiny_model, tmp_path):
    recipe = load(tmp_path, tiny_model, dtype="bfloat16", bf16=True)
    assert recipe.model.dtype == "float32" and not recipe.training.bf16
    assert any(n.startswith("no GPU found: training on CPU in float32 (bf16 and dtype bfloat16 from the recipe turned "
                            "off)") for n in recipe.notes)


# ---------------------------------------------------------------------------------------------------------------
# Refuse or fix


@CPU_OUTCOME
def test_qlora_under_zero3_gets_quant_storage_equal_to_compute_dtype(tiny_model, tmp_path):
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, method="qlora", bnb_4bit_quant_storage="uint8")
    notes = fit_to_launch(recipe, zero_stage=3, world_size=2, on_gpu=False)
    assert recipe.model.bnb_4bit_quant_storage == "float32"  # bf16 is off on CPU: float32 compute
    assert notes == [(f"{recipe.source}: bnb_4bit_quant_storage uint8 -> float32: ZeRO-3 shards the 4-bit storage "
                      "with the other weights, so it must equal the compute dtype")]
    untouched = load(tmp_path, tiny_model, method="qlora", bnb_4bit_quant_storage="uint8")
    assert fit_to_launch(untouched, zero_stage=2, world_size=2, on_gpu=False) == []
    assert untouched.model.bnb_4bit_quant_storage == "uint8"


def test_device_map_is_removed_under_zero3(tiny_model, tmp_path):
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, model_init_kwargs={"device_map": "auto", "low_cpu_mem_usage": True})
    notes = fit_to_launch(recipe, zero_stage=3, world_size=2, on_gpu=False)
    assert recipe.training.model_init_kwargs == {"low_cpu_mem_usage": True}
    assert len(notes) == 1 and "model_init_kwargs.device_map removed" in notes[0]


def test_8bit_base_under_zero3_is_refused(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, method="lora", load_in_8bit=True)
    with pytest.raises(UserError, match="load_in_8bit under ZeRO-3: DeepSpeed cannot shard an 8-bit base; use method: "
                                        "qlora"):
        fit_to_launch(recipe, zero_stage=3, world_size=2, on_gpu=False)
    assert fit_to_launch(recipe, zero_stage=2, world_size=2, on_gpu=False) == []


def test_peft_zero3_checkpointing_is_made_reentrant(tiny_model, tmp_path):
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, method="lora", gradient_checkpointing=True,
                  gradient_checkpointing_kwargs={"use_reentrant": False})
    notes = fit_to_launch(recipe, zero_stage=3, world_size=2, on_gpu=False)
    assert recipe.training.gradient_checkpointing_kwargs == {"use_reentrant": True}
    assert len(notes) == 1 and "trl#2514" in notes[0]
    full = load(tmp_path, tiny_model, method="full", gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False})
    fit_to_launch(full, zero_stage=3, world_size=2, on_gpu=False)
    assert full.training.gradient_checkpointing_kwargs == {"use_reentrant": False}  # only PEFT needs it


def test_packing_on_gpu_needs_padding_free_attention(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, packing=True, attn_implementation="sdpa")
    with pytest.raises(UserError, match="packing: true needs a padding-free attention implementation on GPU, got "
                                        "attn_implementation 'sdpa'; set attn_implementation: flash_attention_2"):
        fit_to_launch(recipe, zero_stage=None, world_size=1, on_gpu=True)
    assert fit_to_launch(recipe, zero_stage=None, world_size=1, on_gpu=False) == []
    recipe.model.attn_implementation = "flash_attention_2"
    assert fit_to_launch(recipe, zero_stage=None, world_size=1, on_gpu=True) == []


def test_offloaded_optimizer_is_the_recipes_and_gpu_only_ones_are_refused(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.launch.profiles import PROFILES
    from sft.recipe.finalize import fit_to_launch

    offload = PROFILES["zero3_offload"].read_deepspeed_config()
    assert "optimizer" not in offload and offload["zero_force_ds_cpu_optimizer"] is False  # the recipe's optim runs
    recipe = load(tmp_path, tiny_model, optim="adamw_torch")
    assert fit_to_launch(recipe, 3, 2, on_gpu=True, deepspeed_config=offload) == [
        "optimizer: the recipe's optim adamw_torch, stepping on the CPU copy of the weights (optimizer offload)"]
    recipe = load(tmp_path, tiny_model, optim="paged_adamw_8bit")
    with pytest.raises(UserError, match=r"optim paged_adamw_8bit cannot step on the CPU copy of the weights that the "
                                        r"DeepSpeed config offloads \(offload_optimizer\); use optim: adamw_torch"):
        fit_to_launch(recipe, 3, 2, on_gpu=True, deepspeed_config=offload)
    zero3 = PROFILES["zero3"].read_deepspeed_config()
    assert fit_to_launch(recipe, 3, 2, on_gpu=True, deepspeed_config=zero3) == []
    own = {**offload, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}  # a user's config with its own
    assert fit_to_launch(recipe, 3, 2, on_gpu=True, deepspeed_config=own) == [
        "optimizer: DeepSpeed's AdamW from the DeepSpeed config, not the recipe's optim paged_adamw_8bit"]


def test_global_batch_sets_accumulation_or_is_refused(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, per_device_train_batch_size=2, global_batch_size=16)
    notes = fit_to_launch(recipe, zero_stage=None, world_size=2, on_gpu=False)
    assert recipe.training.gradient_accumulation_steps == 4
    assert notes == ["global_batch_size 16 = 2 per device x 2 processes x gradient_accumulation_steps 4"]
    recipe = load(tmp_path, tiny_model, per_device_train_batch_size=2, global_batch_size=10)
    with pytest.raises(UserError, match="global_batch_size 10 is not divisible by per_device_train_batch_size 2 x "
                                        "2 processes = 4"):
        fit_to_launch(recipe, zero_stage=None, world_size=2, on_gpu=False)


# ---------------------------------------------------------------------------------------------------------------
# sft launch


@CPU_OUTCOME
def test_launch_dry_run_names_profile_and_command(tiny_model, tmp_path):
    recipe = recipe_file(tmp_path, tiny_model)
    proc = run_cli("launch", recipe, "--num-processes", "2", "--dry-run", "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "sft: profile multi_gpu (cheapest that fits:" in proc.stderr  # a tiny model: DDP on 2 CPU processes
    command = f"accelerate launch --config_file {REPO}/accelerate_configs/multi_gpu.yaml --num_processes 2 " \
              f"{REPO}/sft/run.py {recipe} --max_steps 2"
    assert command in proc.stderr


def test_launch_with_a_named_profile(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.launch.launcher import accelerate_command, choose
    from sft.recipe.load import load_recipe

    recipe = load_recipe(str(recipe_file(tmp_path, tiny_model)))
    assert choose(recipe, "r.yaml", "zero3", on_gpu=False, processes=2, memory_gb=12) == ("zero3", "as asked")
    command = accelerate_command("zero3", 2, "r.yaml", ["--max_steps", "2"])
    assert command[1:] == ["-m", "accelerate.commands.launch", "--config_file", f"{REPO}/accelerate_configs/zero3.yaml",
                           "--num_processes", "2", "--deepspeed_config_file", f"{REPO}/deepspeed_configs/zero3.json",
                           f"{REPO}/sft/run.py", "r.yaml", "--max_steps", "2"]
    with pytest.raises(UserError, match=r"^--profile single_gpu: runs one process; this plan has 2; run `sft plan "
                                        r"r.yaml` to see which fit$"):
        choose(recipe, "r.yaml", "single_gpu", on_gpu=False, processes=2, memory_gb=12)


# ---------------------------------------------------------------------------------------------------------------
# FSDP2: what can be proven without a GPU


def test_fsdp2_profiles_become_torchrun_with_an_fsdp2_plugin(monkeypatch):
    """accelerate's own launch code reads the profile as FSDP version 2 over torchrun, and the plugin the run
    builds from that environment shards per transformer block, reshards after forward and saves one full model."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.fsdp import CPUOffloadPolicy

    for name in ("fsdp2", "fsdp2_qlora"):
        words = ["--config_file", str(REPO / "accelerate_configs" / f"{name}.yaml"), "--num_processes", "4",
                 "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
                 "--main_process_port", "29500", "run.py"]
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(words))
        assert args.use_fsdp and not args.use_deepspeed
        env = prepare_multi_gpu_env(args)
        assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "2")
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        for key, value in env.items():
            if key.startswith(("FSDP_", "ACCELERATE_")):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.cpu_ram_efficient_loading is True and not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
        assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")


def test_fsdp_is_refused_on_cpu_and_fixes_qlora_on_gpu(tiny_model, tmp_path):
    from sft.errors import UserError
    from sft.recipe.finalize import fit_to_launch

    recipe = load(tmp_path, tiny_model, method="qlora", bnb_4bit_quant_storage="uint8",
                  model_init_kwargs={"device_map": "auto"})
    with pytest.raises(UserError, match=r"FSDP runs on GPUs only \(accelerate ignores its FSDP plugin on CPU, so "
                                        r"nothing would be sharded\); on CPU use the zero3 or zero3_qlora profile$"):
        fit_to_launch(recipe, None, 2, on_gpu=False, fsdp=True)
    notes = fit_to_launch(recipe, None, 2, on_gpu=True, fsdp=True)
    assert recipe.model.bnb_4bit_quant_storage == "float32" and recipe.training.model_init_kwargs == {}
    assert [n.split(": ", 1)[1].split(":")[0] for n in notes] == [
        "model_init_kwargs.device_map removed", "bnb_4bit_quant_storage uint8 -> float32"]
    eight_bit = load(tmp_path, tiny_model, method="lora", load_in_8bit=True)
    with pytest.raises(UserError, match="load_in_8bit under FSDP: an 8-bit base cannot be sharded"):
        fit_to_launch(eight_bit, None, 2, on_gpu=True, fsdp=True)


@CPU_OUTCOME
@pytest.mark.parametrize("profile", ["fsdp2", "fsdp2_qlora"])
def test_launch_refuses_fsdp_on_cpu_before_starting(profile, tiny_model, tmp_path):
    """sft's own fsdp2 path on CPU: `sft launch` reads the recipe, detects 2 CPU processes, picks the profile and
    runs its checks, which refuse in one line before any process starts or anything is written."""
    recipe = recipe_file(tmp_path, tiny_model, **({"method": "qlora"} if profile == "fsdp2_qlora" else {}))
    proc = run_cli_in_process("launch", recipe, "--profile", profile, "--num-processes", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "FSDP runs on GPUs only" in proc.stderr and not (tmp_path / "out").exists()
