"""Launch profiles (accelerate_configs/*.yaml) and the checks that refuse or fix combinations that cannot work.

The same checks run before `sft launch` starts accelerate and at the start of every run under accelerate, so
`accelerate launch --config_file accelerate_configs/NAME.yaml sft/run.py RECIPE` is covered too.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError

PACKAGE = Path(__file__).resolve().parent
RUN_SCRIPT = PACKAGE / "run.py"  # what `accelerate launch` runs
# The folder holding accelerate_configs/ and deepspeed_configs/: the top of a checkout (or an editable install),
# where users type those paths; installed from a wheel, the package itself, which carries the same files
# (pyproject.toml maps them in).
ROOT = PACKAGE.parent if (PACKAGE.parent / "accelerate_configs").is_dir() else PACKAGE
ACCELERATE_CONFIGS = ROOT / "accelerate_configs"


@dataclass(frozen=True)
class Profile:
    name: str
    zero_stage: int | None  # None: no DeepSpeed
    offload: bool = False  # ZeRO-3 with weights and optimizer states in CPU memory
    deepspeed_config: str | None = None  # relative to ROOT
    summary: str = ""

    @property
    def config_file(self) -> Path:
        return ACCELERATE_CONFIGS / f"{self.name}.yaml"

    def accelerate_args(self, processes: int) -> list[str]:
        """`accelerate launch` options for this profile, with absolute paths so they work from any directory (the
        profile names its DeepSpeed file relative to ROOT)."""
        args = ["--config_file", str(self.config_file), "--num_processes", str(processes)]
        return args + (["--deepspeed_config_file", str(ROOT / self.deepspeed_config)] if self.deepspeed_config else [])


# Cheapest first: less communication and no CPU traffic run faster, so the planner recommends the first that fits.
PROFILES = {
    p.name: p
    for p in (
        Profile("single_gpu", None, summary="one GPU, no sharding"),
        Profile("multi_gpu", None, summary="DDP: the whole model on every GPU"),
        Profile("zero1", 1, deepspeed_config="deepspeed_configs/zero1.json",
                summary="DeepSpeed ZeRO-1: optimizer states sharded"),
        Profile("zero2", 2, deepspeed_config="deepspeed_configs/zero2.json",
                summary="DeepSpeed ZeRO-2: gradients and optimizer states sharded"),
        Profile("zero3", 3, deepspeed_config="deepspeed_configs/zero3.json",
                summary="DeepSpeed ZeRO-3: weights, gradients and optimizer states sharded"),
        Profile("zero3_qlora", 3, deepspeed_config="deepspeed_configs/zero3.json",
                summary="DeepSpeed ZeRO-3 over a 4-bit base (quant storage = compute dtype)"),
        Profile("zero3_offload", 3, offload=True, deepspeed_config="deepspeed_configs/zero3_offload.json",
                summary="DeepSpeed ZeRO-3, weights and optimizer states offloaded to CPU memory"),
    )
}


def applicable(profile: Profile, method: str, load_in_8bit: bool, world_size: int) -> str | None:
    """Why a profile cannot run this method at this world size, or None when it can."""
    if profile.name == "single_gpu" and world_size != 1:
        return f"runs one process; this plan has {world_size}"
    if profile.name != "single_gpu" and not profile.offload and world_size == 1:
        return "needs more than one process"
    if method == "qlora" and profile.zero_stage is not None and profile.name != "zero3_qlora":
        return "4-bit bases are sharded by zero3_qlora"
    if method != "qlora" and profile.name == "zero3_qlora":
        return "for 4-bit (qlora) recipes only"
    if load_in_8bit and profile.zero_stage == 3:
        return "ZeRO-3 cannot shard an 8-bit base"
    return None


def profile_named(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"--profile {name}: unknown profile; choose auto or one of {', '.join(PROFILES)}")
    return PROFILES[name]


# ---------------------------------------------------------------------------------------------------------------
# What this process runs under (from accelerate's environment), for the checks at the start of a run


def running_zero_stage(training) -> int | None:
    """The DeepSpeed ZeRO stage of this run: TrainingArguments builds the plugin when accelerate says DeepSpeed."""
    plugin = getattr(training, "deepspeed_plugin", None)
    if plugin is not None:
        return int(plugin.zero_stage)
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true") and config_file:
        return int(json.loads(Path(config_file).read_text()).get("zero_optimization", {}).get("stage", 0))
    return None


# ---------------------------------------------------------------------------------------------------------------
# Refuse or fix

# Attention implementations that read packed sequences from position_ids instead of a padded mask.
PADDING_FREE_ATTENTION = ("flash_attention_2", "flash_attention_3")


def is_padding_free(attn_implementation: str | None) -> bool:
    name = attn_implementation or ""
    return name in PADDING_FREE_ATTENTION or (name.startswith("kernels-community/") and "flash" in name)


def compute_dtype(training) -> str:
    return "bfloat16" if training.bf16 else "float16" if training.fp16 else "float32"


def check_combination(recipe, zero_stage: int | None, world_size: int, on_gpu: bool) -> list[str]:
    """Refuse (UserError saying what to change) or fix in place (one note each) what cannot work together.

    Fixes are applied only where there is one right answer; the notes say what was changed."""
    notes = []
    model, training, where = recipe.model, recipe.training, recipe.source
    zero3 = zero_stage == 3

    if zero3 and model.load_in_8bit:
        raise UserError(f"{where}: load_in_8bit under ZeRO-3: DeepSpeed cannot shard an 8-bit base; use method: "
                        "qlora (4-bit, sharded by accelerate_configs/zero3_qlora.yaml) or the zero2/multi_gpu profile")
    init_kwargs = training.model_init_kwargs or {}
    if zero3 and init_kwargs.get("device_map") is not None:
        init_kwargs.pop("device_map")
        notes.append(f"{where}: model_init_kwargs.device_map removed: under ZeRO-3 DeepSpeed places every shard "
                     "itself (a device_map breaks QLoRA + ZeRO-3, alignment-handbook#42)")
    if zero3 and model.load_in_4bit:
        wanted = compute_dtype(training)
        if model.bnb_4bit_quant_storage not in (None, wanted):
            notes.append(f"{where}: bnb_4bit_quant_storage {model.bnb_4bit_quant_storage} -> {wanted}: ZeRO-3 "
                         "shards the 4-bit storage with the other weights, so it must equal the compute dtype")
        model.bnb_4bit_quant_storage = wanted
    if zero3 and model.use_peft and training.gradient_checkpointing:
        kwargs = dict(training.gradient_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant") is not True:
            if kwargs.get("use_reentrant") is False:
                notes.append(f"{where}: gradient_checkpointing_kwargs.use_reentrant false -> true: PEFT + ZeRO-3 "
                             "with non-reentrant checkpointing raises CheckpointError (trl#2514)")
            kwargs["use_reentrant"] = True
            training.gradient_checkpointing_kwargs = training.activation_checkpointing_kwargs = kwargs
    if on_gpu and training.packing and not is_padding_free(model.attn_implementation):
        raise UserError(f"{where}: packing: true needs a padding-free attention implementation on GPU, got "
                        f"attn_implementation {model.attn_implementation!r}; set attn_implementation: "
                        "flash_attention_2 (or kernels-community/flash-attn), or packing: false")
    notes += check_global_batch(recipe, world_size)
    return notes


def check_global_batch(recipe, world_size: int) -> list[str]:
    """`global_batch_size` is examples per optimizer step over all processes; accumulation follows from it."""
    wanted = recipe.sft.global_batch_size
    if not wanted:
        return []
    per_step = recipe.training.per_device_train_batch_size * world_size
    if wanted % per_step:
        raise UserError(
            f"{recipe.source}: global_batch_size {wanted} is not divisible by per_device_train_batch_size "
            f"{recipe.training.per_device_train_batch_size} x {world_size} processes = {per_step}; change "
            "global_batch_size, per_device_train_batch_size or the number of processes")
    steps = wanted // per_step
    if steps == recipe.training.gradient_accumulation_steps:
        return []
    import dataclasses

    # A copy re-runs TrainingArguments' post-init, which fills DeepSpeed's "auto" batch sizes from the new value.
    recipe.training = dataclasses.replace(recipe.training, gradient_accumulation_steps=steps)
    return [(f"global_batch_size {wanted} = {recipe.training.per_device_train_batch_size} per device x "
             f"{world_size} processes x gradient_accumulation_steps {steps}")]


def check_running(recipe) -> list[str]:
    """The checks for the process this is, under whatever accelerate launched it with."""
    from sft.hardware import has_gpu, world_size

    return check_combination(recipe, running_zero_stage(recipe.training), world_size(), has_gpu())
