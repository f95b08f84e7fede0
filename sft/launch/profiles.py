"""Launch profiles (accelerate_configs/*.yaml) and the checks that refuse or fix combinations that cannot work.

The same checks run before `sft launch` starts accelerate and at the start of every run under accelerate, so
`accelerate launch --config_file accelerate_configs/NAME.yaml sft/run.py RECIPE` is covered too.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1]  # the sft package
RUN_SCRIPT = PACKAGE / "run.py"  # what `accelerate launch` runs
# The folder holding accelerate_configs/ and deepspeed_configs/: the top of a checkout (or an editable install),
# where users type those paths; installed from a wheel, the package itself, which carries the same files
# (pyproject.toml maps them in).
ROOT = PACKAGE.parent if (PACKAGE.parent / "accelerate_configs").is_dir() else PACKAGE
ACCELERATE_CONFIGS = ROOT / "accelerate_configs"
# The README's form: the extra of this checkout, never `pip install 'sft[...]'` (another package on PyPI).
DEEPSPEED_INSTALL = 'pip install -c constraints.txt --no-build-isolation -e ".[deepspeed]"'


@dataclass(frozen=True)
class Profile:
    name: str
    zero_stage: int | None  # None: no DeepSpeed
    offload: bool = False  # ZeRO-3 with weights and optimizer states in CPU memory
    fsdp: bool = False  # PyTorch FSDP2 (fully_shard): weights, gradients and optimizer states sharded, GPUs only
    deepspeed_config: str | None = None  # relative to ROOT
    summary: str = ""

    @property
    def config_file(self) -> Path:
        return ACCELERATE_CONFIGS / f"{self.name}.yaml"

    def read_deepspeed_config(self) -> dict | None:
        return json.loads((ROOT / self.deepspeed_config).read_text()) if self.deepspeed_config else None

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
        # After DeepSpeed: the same memory as ZeRO-3, but proven on GPUs only (accelerate runs FSDP on GPUs alone).
        Profile("fsdp2", None, fsdp=True, summary="PyTorch FSDP2: weights, gradients and optimizer states sharded"),
        Profile("fsdp2_qlora", None, fsdp=True,
                summary="PyTorch FSDP2 over a 4-bit base (quant storage = compute dtype)"),
    )
}


def applicable(profile: Profile, method: str, load_in_8bit: bool, world_size: int) -> str | None:
    """Why a profile cannot run this method at this world size, or None when it can."""
    if profile.name == "single_gpu" and world_size != 1:
        return f"runs one process; this plan has {world_size}"
    if profile.name != "single_gpu" and not profile.offload and world_size == 1:
        return "needs more than one process"
    qlora_profile = profile.name.endswith("_qlora")
    if method == "qlora" and (profile.zero_stage is not None or profile.fsdp) and not qlora_profile:
        return "4-bit bases are sharded by zero3_qlora or fsdp2_qlora"
    if method != "qlora" and qlora_profile:
        return "for 4-bit (qlora) recipes only"
    if load_in_8bit and (profile.zero_stage == 3 or profile.fsdp):
        return "ZeRO-3 and FSDP cannot shard an 8-bit base"
    return None


def profile_named(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"--profile {name}: unknown profile; choose auto or one of {', '.join(PROFILES)}")
    return PROFILES[name]


# ---------------------------------------------------------------------------------------------------------------
# What this process runs under (from accelerate's environment), for the checks at the start of a run


def running_deepspeed_config(training) -> dict | None:
    """The DeepSpeed config of this run, or None without DeepSpeed: TrainingArguments builds the plugin when
    accelerate says DeepSpeed."""
    plugin = getattr(training, "deepspeed_plugin", None)
    if plugin is not None:
        return plugin.deepspeed_config
    config_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true") and config_file:
        return json.loads(Path(config_file).read_text())
    return None


def zero_stage_of(deepspeed_config: dict | None) -> int | None:
    return None if deepspeed_config is None else int(deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(deepspeed_config: dict | None) -> bool:
    offload = (deepspeed_config or {}).get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") != "none"


# ---------------------------------------------------------------------------------------------------------------
# Refuse or fix

# Attention implementations that read packed sequences from position_ids instead of a padded mask.
PADDING_FREE_ATTENTION = ("flash_attention_2", "flash_attention_3")


def is_padding_free(attn_implementation: str | None) -> bool:
    name = attn_implementation or ""
    return name in PADDING_FREE_ATTENTION or (name.startswith("kernels-community/") and "flash" in name)


def compute_dtype(training) -> str:
    return "bfloat16" if training.bf16 else "float16" if training.fp16 else "float32"


# Optimizers whose kernels or state need the GPU (bitsandbytes, torchao low-bit, apex) or that replace the
# optimizer step themselves (LOMO, GaLore, APOLLO): none can step on DeepSpeed's CPU copy of the weights.
GPU_ONLY_OPTIMIZERS = ("bnb", "8bit", "4bit", "paged", "apex", "lomo", "galore", "apollo")


def optimizer_notes(recipe, deepspeed_config: dict | None) -> list[str]:
    """Which optimizer steps under DeepSpeed: a config's own `optimizer` replaces the recipe's `optim`; with the
    optimizer offloaded, the recipe's must run on CPU tensors."""
    if deepspeed_config is None:
        return []
    optim = str(getattr(recipe.training.optim, "value", recipe.training.optim))
    own = deepspeed_config.get("optimizer")
    if own:
        return [f"optimizer: DeepSpeed's {own.get('type')} from the DeepSpeed config, not the recipe's optim {optim}"]
    if not offloads_optimizer(deepspeed_config):
        return []
    if any(part in optim for part in GPU_ONLY_OPTIMIZERS):
        raise UserError(f"{recipe.source}: optim {optim} cannot step on the CPU copy of the weights that the "
                        "DeepSpeed config offloads (offload_optimizer); use optim: adamw_torch (or adafactor), or a "
                        "profile without offload")
    return [f"optimizer: the recipe's optim {optim}, stepping on the CPU copy of the weights (optimizer offload)"]


@dataclass(frozen=True)
class Fix:
    """One value a launch needs changed; sft/recipe/finalize.py applies it (the one place a recipe is changed)."""

    section: str  # "model" or "training"
    key: str
    value: object


def combination_fixes(recipe, zero_stage: int | None, world_size: int, on_gpu: bool,
                      deepspeed_config: dict | None = None, fsdp: bool = False) -> tuple[list[Fix], list[str]]:
    """Refuse (UserError saying what to change) what cannot work together; (fixes, one note each) for what has one
    right answer. Reads the recipe, changes nothing."""
    notes = optimizer_notes(recipe, deepspeed_config)
    fixes = []
    model, training, where = recipe.model, recipe.training, recipe.source
    if fsdp and not on_gpu:
        # accelerate switches to FSDP only for GPU distributed types; on CPU it drops the plugin without a word and
        # each process would hold the whole model.
        raise UserError(f"{where}: FSDP runs on GPUs only (accelerate ignores its FSDP plugin on CPU, so nothing "
                        "would be sharded); on CPU use the zero3 or zero3_qlora profile")
    if zero_stage == 3 and model.load_in_8bit:
        raise UserError(f"{where}: load_in_8bit under ZeRO-3: DeepSpeed cannot shard an 8-bit base; use method: "
                        "qlora (4-bit, sharded by accelerate_configs/zero3_qlora.yaml) or the zero2/multi_gpu profile")
    if fsdp and model.load_in_8bit:
        raise UserError(f"{where}: load_in_8bit under FSDP: an 8-bit base cannot be sharded; use method: qlora "
                        "(accelerate_configs/fsdp2_qlora.yaml) or the multi_gpu profile")
    shards_weights, sharder = zero_stage == 3 or fsdp, "FSDP" if fsdp else "ZeRO-3"
    init_kwargs = training.model_init_kwargs or {}
    if shards_weights and init_kwargs.get("device_map") is not None:
        fixes.append(Fix("training", "model_init_kwargs", {k: v for k, v in init_kwargs.items() if k != "device_map"}))
        notes.append(f"{where}: model_init_kwargs.device_map removed: under {sharder} every shard is placed by the "
                     "sharding itself (a device_map breaks QLoRA + ZeRO-3, alignment-handbook#42)")
    if shards_weights and model.load_in_4bit:
        wanted = compute_dtype(training)
        if model.bnb_4bit_quant_storage not in (None, wanted):
            notes.append(f"{where}: bnb_4bit_quant_storage {model.bnb_4bit_quant_storage} -> {wanted}: {sharder} "
                         "shards the 4-bit storage with the other weights, so it must equal the compute dtype")
        fixes.append(Fix("model", "bnb_4bit_quant_storage", wanted))
    if zero_stage == 3 and model.use_peft and training.gradient_checkpointing:
        kwargs = dict(training.gradient_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant") is not True:
            if kwargs.get("use_reentrant") is False:
                notes.append(f"{where}: gradient_checkpointing_kwargs.use_reentrant false -> true: PEFT + ZeRO-3 "
                             "with non-reentrant checkpointing raises CheckpointError (trl#2514)")
            kwargs["use_reentrant"] = True
            fixes += [Fix("training", "gradient_checkpointing_kwargs", kwargs),
                      Fix("training", "activation_checkpointing_kwargs", kwargs)]
    if on_gpu and training.packing and not is_padding_free(model.attn_implementation):
        raise UserError(f"{where}: packing: true needs a padding-free attention implementation on GPU, got "
                        f"attn_implementation {model.attn_implementation!r}; set attn_implementation: "
                        "flash_attention_2 (or kernels-community/flash-attn), or packing: false")
    steps, batch_notes = accumulation_for_global_batch(recipe, world_size)
    if steps is not None:
        fixes.append(Fix("training", "gradient_accumulation_steps", steps))
    return fixes, notes + batch_notes


def accumulation_for_global_batch(recipe, world_size: int) -> tuple[int | None, list[str]]:
    """`global_batch_size` is examples per optimizer step over all processes; accumulation follows from it.
    Returns (gradient_accumulation_steps where it changes, else None; the note)."""
    wanted = recipe.sft.global_batch_size
    if not wanted:
        return None, []
    per_device = recipe.training.per_device_train_batch_size
    per_step = per_device * world_size
    if wanted % per_step:
        raise UserError(
            f"{recipe.source}: global_batch_size {wanted} is not divisible by per_device_train_batch_size "
            f"{per_device} x {world_size} processes = {per_step}; change "
            "global_batch_size, per_device_train_batch_size or the number of processes")
    steps = wanted // per_step
    if steps == recipe.training.gradient_accumulation_steps:
        return None, []
    return steps, [f"global_batch_size {wanted} = {per_device} per device x {world_size} processes x "
                   f"gradient_accumulation_steps {steps}"]


def running_launch(training) -> tuple[int | None, int, bool, dict | None, bool]:
    """(zero stage, world size, on GPU, DeepSpeed config, FSDP) of this process, under whatever accelerate launched
    it with: what sft/recipe/finalize.py fits the recipe to at the start of a run."""
    from sft.train.hardware import has_gpu, world_size

    deepspeed_config = running_deepspeed_config(training)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    return zero_stage_of(deepspeed_config), world_size(), has_gpu(), deepspeed_config, fsdp
