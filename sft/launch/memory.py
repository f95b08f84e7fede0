"""Memory planner: the peak memory per GPU of a recipe under every launch profile, from the model's config alone.

Parameters are counted exactly on the meta device (no weights). The estimate adds up, per GPU:
  weights      base weights: 16-bit (2 B), fp32 (4 B), 8-bit (1 B + a 4-byte scale per row) or NF4 with double
               quantization (4 + 8/64 + 32/(64*256) = 4.127 bits); embeddings, lm_head and norms stay 16-bit
  lora         adapter weights (PEFT keeps them in fp32, TRL casts QLoRA's to bf16; DeepSpeed to 16-bit)
  gradients    of the trained parameters
  optimizer    AdamW: two moments in the parameter's dtype; under DeepSpeed an fp32 master copy and two fp32
               moments (12 B); 8-bit optimizers 2 B
  ZeRO         stage 1 shards optimizer states, stage 2 also gradients, stage 3 also weights, over all GPUs;
               offload moves weights, gradients and optimizer states to CPU memory
  FSDP2        shards weights, gradients and optimizer states over all GPUs, as ZeRO-3; under 16-bit mixed
               precision accelerate keeps the sharded trained parameters in fp32 (4 B) and their gradients in fp32
               (4 B) beside AdamW's two fp32 moments (8 B): 16 B per trained parameter, ZeRO-3's total; frozen
               16-bit weights (LoRA's base) stay 16-bit, a 4-bit base stays 4-bit
  activations  Korthikanti et al.: s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit (the a*s term only for eager
               attention; sdpa and flash attention keep no s*s scores); with gradient checkpointing 2*s*b*h per
               layer plus one layer recomputed in full
  logits       s*b*V*4 bytes of fp32 logits and as much again for their gradient
  zero3_gather ZeRO-3 gathers whole layers to compute: the largest block, twice (current and prefetched)
  overhead     1 GiB CUDA context and kernels, plus 10% of the rest for allocator fragmentation and buffers,
               with the expandable segments runs use by default (a PYTORCH_CUDA_ALLOC_CONF of your own replaces
               them; under torch's default allocator packed runs peaked at 2.0-2.6x the estimate: README, GPU
               check)
A profile fits when its estimate leaves 10% of the GPU free (HEADROOM).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError
from sft.launch.profiles import Profile, applicable

GB = 1e9
GiB = 2**30
HEADROOM = 0.10
CONTEXT_BYTES = 1 * GiB
FRAGMENTATION = 0.10
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA paper: double quantization costs 0.127 bits per parameter
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass
class ModelCount:
    """Exact parameter counts of one model, from its config."""

    total: int
    embedding: int  # input embeddings
    lm_head: int  # 0 when tied to the embeddings
    linear: int  # weights of nn.Linear inside the transformer blocks: what bitsandbytes quantizes
    linear_rows: int  # output rows of those (8-bit keeps one fp32 scale per row)
    largest_block: int  # parameters of the largest transformer block (what ZeRO-3 gathers at once)
    layers: int
    hidden: int
    heads: int
    vocab: int
    trainable: int  # trained parameters for the recipe's method (full: total; freeze: the chosen blocks)
    lora: int = 0  # adapter parameters for the recipe's LoRA settings
    config_dtype: str | None = None


@dataclass
class Setup:
    """What the recipe asks for, as far as memory goes."""

    method: str
    load_in_8bit: bool
    half: bool  # 16-bit mixed precision (bf16 or fp16)
    weight_bytes: int  # bytes per weight as loaded (from the recipe's dtype or the config's)
    optimizer_state_bytes: float | None  # per trained parameter outside DeepSpeed; None: from the weights' dtype
    batch: int
    seq: int
    checkpointing: bool
    attn_implementation: str | None


@dataclass
class Estimate:
    name: str
    applicable: bool
    reason: str | None
    fits: bool = False
    per_gpu_bytes: int = 0
    breakdown: dict = field(default_factory=dict)
    host_bytes_per_node: int = 0
    summary: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Counting


def load_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """A model config from a local folder, a config.json file, or a Hub name (the config file only)."""
    if not Path(source).exists():
        reach_hub_config(source, revision)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{source}: cannot read the model config: {str(err).splitlines()[0]}; pass a config.json "
                        "with --model-config") from err


def reach_hub_config(repo_id: str, revision: str | None) -> None:
    """Fail in one line, at once, when a Hub name's config is neither cached nor reachable: offline transformers
    would import for seconds first, and with the Hub unreachable the client retries for ~30 s."""
    import httpx2  # huggingface_hub's HTTP client: its network errors are neither ConnectionError nor OSError
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

    from sft.hub.addresses import hub_errors, offline, quiet_client

    hint = "pass a config.json with --model-config"
    try:
        hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True)
        return
    except (*hub_errors(), ValueError):
        pass  # not cached (or not a repo name): transformers says which below, once the Hub answers
    if offline():
        raise UserError(f"{repo_id}: model config not in the local cache and HF_HUB_OFFLINE=1; {hint}, or run it "
                        "once with network access to cache it")
    try:
        with quiet_client():  # one HEAD, no retries
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), timeout=10)
    except (ConnectionError, httpx2.TransportError) as err:
        raise UserError(f"{repo_id}: cannot reach the Hub at {constants.ENDPOINT} ({err}) to read the model config; "
                        f"check the network or HF_ENDPOINT, or {hint}") from err
    except (*hub_errors(), ValueError):
        pass  # the Hub answered: transformers reports a missing repo, file or revision in its words


def lora_targets(target_modules, name: str) -> bool:
    if target_modules in ("all-linear", ["all-linear"]):
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name.split(".")[-1] in (target_modules or [])


def count_parameters(config, recipe=None) -> ModelCount:
    """Build the model on the meta device (no memory, no weights) and count what each part of the plan needs."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=True):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    tied = head_weight is None or head_weight is embedding
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    blocks = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), None)
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0) if blocks else 0
    linear = linear_rows = lora = 0
    method = recipe.sft.method if recipe is not None else "full"
    targets = recipe.model.lora_target_modules if recipe is not None else None
    rank = recipe.model.lora_r if recipe is not None else 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            linear += module.weight.numel()
            linear_rows += module.out_features
            if method in ("lora", "qlora") and lora_targets(targets, name):
                lora += rank * (module.in_features + module.out_features)
    trainable = total
    if method in ("lora", "qlora"):
        trainable = 0
        for name in recipe.model.lora_modules_to_save or []:  # trained in full beside the adapter
            trainable += sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-2] == name)
    elif method == "freeze":
        from sft.model import freeze

        trainable = sum(model.get_parameter(n).numel()
                        for n in freeze(model, recipe.sft.trainable_layers, recipe.sft.trainable_modules))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return ModelCount(
        total=total, embedding=embedding.numel(), lm_head=0 if tied else head_weight.numel(), linear=linear,
        linear_rows=linear_rows, largest_block=largest_block, layers=config.num_hidden_layers,
        hidden=config.hidden_size, heads=config.num_attention_heads, vocab=config.vocab_size, trainable=trainable,
        lora=lora, config_dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# The arithmetic


def zero_model_states(params: float, world: int, stage: int, weight_bytes=2, grad_bytes=2, optim_bytes=12) -> dict:
    """Model states per GPU for mixed-precision AdamW under ZeRO stage 0-3 (the ZeRO paper's 2 + 2 + 12 bytes)."""
    return {
        "weights": params * weight_bytes / (world if stage >= 3 else 1),
        "gradients": params * grad_bytes / (world if stage >= 2 else 1),
        "optimizer": params * optim_bytes / (world if stage >= 1 else 1),
    }


def base_weight_bytes(count: ModelCount, setup: Setup, deepspeed: bool, fsdp: bool = False) -> float:
    """Bytes of all base weights: quantized blocks' linears, 16-bit (or fp32) everything else."""
    wbytes = 2 if (deepspeed and setup.half) else setup.weight_bytes
    if fsdp and setup.method == "full":
        wbytes = 4  # the fp32 sharded parameter is the master copy (mixed precision computes on 16-bit gathers)
    unquantized = count.total - count.linear
    if setup.method == "qlora":
        compute = 2 if setup.half else 4
        return count.linear * NF4_BITS / 8 + unquantized * compute
    if setup.load_in_8bit:
        return count.linear + 4 * count.linear_rows + unquantized * 2
    return count.total * wbytes


def activation_bytes(count: ModelCount, setup: Setup) -> tuple[float, float]:
    """(activations, logits) per GPU for one micro-batch."""
    s, b, h, a = setup.seq, setup.batch, count.hidden, count.heads
    scale = 1 if setup.half else 2  # the formula counts 16-bit activations
    scores = 5 * a * s / h if (setup.attn_implementation or "sdpa") == "eager" else 0
    full_layer = s * b * h * (34 + scores) * scale
    if setup.checkpointing:
        activations = count.layers * 2 * s * b * h * scale + full_layer
    else:
        activations = count.layers * full_layer
    logits = 2 * s * b * count.vocab * 4
    return activations, logits


def estimate(count: ModelCount, setup: Setup, profile: Profile, world: int, nodes: int, gpu_bytes: float) -> Estimate:
    reason = applicable(profile, setup.method, setup.load_in_8bit, world)
    if reason:
        return Estimate(profile.name, False, reason, summary=profile.summary)
    deepspeed = profile.zero_stage is not None
    stage = 3 if profile.fsdp else profile.zero_stage or 0  # FSDP2 shards what ZeRO-3 shards
    peft = setup.method in ("lora", "qlora")
    trained = count.lora + count.trainable if peft else count.trainable
    if deepspeed:
        grad_bytes, optim_bytes = (2 if setup.half else 4), 12
        lora_bytes = 2 if setup.half else 4
    elif profile.fsdp:
        grad_bytes, optim_bytes, lora_bytes = 4, 8, 4  # fp32 parameters, gradients and AdamW moments
    else:
        # PEFT keeps adapters in fp32; TRL casts QLoRA adapters to bf16 (QLoRA paper). AdamW's moments follow.
        param_bytes = (2 if setup.method == "qlora" else 4) if peft else setup.weight_bytes
        grad_bytes = lora_bytes = param_bytes
        default_states = 2 * param_bytes
        optim_bytes = setup.optimizer_state_bytes if setup.optimizer_state_bytes is not None else default_states
    weights = base_weight_bytes(count, setup, deepspeed, profile.fsdp)
    if peft and count.trainable:  # modules_to_save: a trained copy beside the frozen original
        weights += count.trainable * (2 if deepspeed and setup.half else setup.weight_bytes)
    adapter = count.lora * lora_bytes
    # Per-byte form of the ZeRO arithmetic: the base weights need not be the trained parameters.
    states = zero_model_states(1, world, stage, weights, trained * grad_bytes, trained * optim_bytes)
    states["lora"] = adapter / (world if stage >= 3 else 1)
    host = 0.0
    if profile.offload:
        host = sum(states.values()) * world / nodes  # what the ranks of one node keep in CPU memory
        states = {k: 0.0 for k in states}
    activations, logits = activation_bytes(count, setup)
    gather = 2 * count.largest_block * (2 if setup.half else setup.weight_bytes) if stage == 3 else 0
    if stage == 3 and setup.method == "qlora":
        gather = 2 * count.largest_block * NF4_BITS / 8
    parts = {
        "weights": states["weights"], "lora": states["lora"], "gradients": states["gradients"],
        "optimizer_states": states["optimizer"], "activations": activations, "logits": logits,
        "zero3_gather": gather,
    }
    subtotal = sum(parts.values())
    parts["overhead"] = CONTEXT_BYTES + FRAGMENTATION * subtotal
    total = subtotal + parts["overhead"]
    return Estimate(
        profile.name, True, None, fits=total <= gpu_bytes * (1 - HEADROOM), per_gpu_bytes=int(total),
        breakdown={k: int(v) for k, v in parts.items()}, host_bytes_per_node=int(host), summary=profile.summary,
    )


