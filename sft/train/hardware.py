"""What the machine can do, and the recipe values that follow from it (precision, distributed backend)."""

import os

# Values chosen here for this machine; the resolved recipe writes the recipe's own (or leaves them out), so it
# asks for the same on other hardware.
HARDWARE_KEYS = ("bf16", "fp16", "ddp_backend", "use_cpu", "dtype", "attn_implementation", "use_liger_kernel",
                 "padding_free", "tf32")  # the last four: sft/capabilities.py's fallbacks


def default_cuda_allocator() -> None:
    """PyTorch's CUDA caching allocator with expandable segments, unless the user configured the allocator
    (PYTORCH_CUDA_ALLOC_CONF, or torch's newer name PYTORCH_ALLOC_CONF, which wins over it). Torch reads it when CUDA
    starts: call this before `import torch`. A CPU-only torch ignores it."""
    # Without it, packed batches fragmented an H200's cache: 2x the allocated peak reserved, 1.45x slower (README)
    if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def hardware_choices(values: dict) -> tuple[dict, list[str]]:
    """Precision and backend for this machine: (recipe values to set, one note per decision the user should know
    about). The recipe is changed by sft/recipe/finalize.py alone; an accelerate config's mixed precision, read
    from the environment, is turned off here on CPU."""
    changes, notes = {}, []
    if not has_gpu():
        wanted = [k for k in ("bf16", "fp16") if values.get(k)]
        changes["bf16"] = changes["fp16"] = False
        if values.get("dtype", "float32") not in ("float32", "float"):
            # Pure 16-bit weights on CPU: slow kernels and updates lost to rounding, with no fp32 master copy.
            wanted.append(f"dtype {values['dtype']}")
            changes["dtype"] = "float32"
        extra = f" ({' and '.join(wanted)} from the recipe turned off)" if wanted else ""
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launcher != "no":
            # An accelerate config's mixed_precision (GPU profiles say bf16) would autocast on CPU: float32 instead.
            os.environ["ACCELERATE_MIXED_PRECISION"] = "no"
            extra += f" (mixed_precision {launcher} from the accelerate config turned off)"
        if world_size() > 1:
            # Without gloo, accelerate picks no backend on a CPU box and every process trains alone.
            if "ddp_backend" not in values:
                changes["ddp_backend"] = "gloo"
            if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("1", "true") and "use_cpu" not in values:
                # DDP: without use_cpu accelerate finds no device, skips DDP, and each process trains alone.
                changes["use_cpu"] = True
            extra += f", {world_size()} processes over gloo"
        notes.append(f"no GPU found: training on CPU in float32{extra}")
        notes.append(cpu_threads())
        if (values.get("load_in_4bit") or values.get("load_in_8bit")) and "bnb_4bit_quant_storage" not in values:
            changes["bnb_4bit_quant_storage"] = "float32"
    else:
        import torch

        if "bf16" not in values and "fp16" not in values:
            changes["bf16"] = torch.cuda.is_bf16_supported()
            changes["fp16"] = not changes["bf16"]
    return changes, notes


def cpu_threads() -> str:
    """Set torch's intra-op threads so that this machine's training processes cannot oversubscribe its cores (torch
    starts one per logical CPU in every process: on a busy 2-core machine the quickstart took 40 min instead of 2);
    OMP_NUM_THREADS, when set, is the user's (or the launcher's) choice. Returns the note saying so."""
    import psutil
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        how = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        cores = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(1 if processes > 1 else cores)
        how = "1 per process under a launcher" if processes > 1 else f"{cores} physical cores available"
    return f"CPU threads: {torch.get_num_threads()} per process ({how}; set OMP_NUM_THREADS to choose)"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def under_launcher() -> bool:
    """This process was started by accelerate launch (sft launch, sft slurm) or torchrun: it must not launch again."""
    return any(name in os.environ for name in ("ACCELERATE_DYNAMO_BACKEND", "WORLD_SIZE", "SFT_LAUNCHED"))
