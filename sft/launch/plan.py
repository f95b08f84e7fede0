"""The plan: every launch profile's memory estimate for a recipe on given GPUs (sft/launch/memory.py), the cheapest
profile that fits, and the `accelerate launch` line that runs it."""

import dataclasses
from pathlib import Path

from sft.errors import UserError
from sft.launch.memory import (DTYPE_BYTES, GB, HEADROOM, ModelCount, Setup, count_parameters, estimate,
                               load_config)
from sft.launch.profiles import PACKAGE, PROFILES, ROOT, RUN_SCRIPT


def setup_from_recipe(recipe, count: ModelCount, half: bool | None = None) -> Setup:
    """The recipe's memory-relevant settings. `half`: 16-bit mixed precision, by default what a GPU run uses
    (bf16 unless the recipe turned both bf16 and fp16 off)."""
    training, explicit = recipe.training, recipe.explicit
    if half is None:
        half = bool(explicit.get("bf16", True) or explicit.get("fp16", False))
    dtype = explicit.get("dtype", recipe.model.dtype)  # the recipe's own: a CPU machine loads float32 instead
    if dtype in (None, "auto"):
        dtype = count.config_dtype or "float32"
    optim = str(getattr(training.optim, "value", training.optim))
    optimizer_state_bytes = 2.0 if "8bit" in optim else 0.0 if optim.startswith("sgd") else None
    return Setup(
        method=recipe.sft.method, load_in_8bit=bool(recipe.model.load_in_8bit), half=half,
        weight_bytes=DTYPE_BYTES.get(dtype, 4), optimizer_state_bytes=optimizer_state_bytes,
        batch=training.per_device_train_batch_size, seq=training.max_length or 1024,
        checkpointing=bool(training.gradient_checkpointing), attn_implementation=recipe.model.attn_implementation,
    )


def make_plan(recipe, gpus: int, gpu_memory_gb: float, nodes: int = 1, model_config: str | None = None,
              half: bool | None = None, recipe_address: str | None = None) -> dict:
    """Every profile's estimate for `gpus` GPUs per node on `nodes` nodes, and the cheapest that fits."""
    if gpus < 1 or nodes < 1:
        raise UserError("--gpus and --nodes must be at least 1")
    if gpu_memory_gb <= 0:
        raise UserError("--gpu-memory must be a positive number of GB")
    config = load_config(model_config or recipe.model.model_name_or_path, None if model_config else
                         recipe.model.model_revision, recipe.training.trust_remote_code)
    count = count_parameters(config, recipe)
    setup = setup_from_recipe(recipe, count, half)
    world = gpus * nodes
    gpu_bytes = gpu_memory_gb * GB
    estimates = [estimate(count, setup, p, world, nodes, gpu_bytes) for p in PROFILES.values()]
    recommended = next((e for e in estimates if e.applicable and e.fits), None)
    address = recipe_address or recipe.source
    return {
        "recipe": address,
        "model": {"config": model_config or recipe.model.model_name_or_path, "parameters": count.total,
                  "trainable_parameters": count.lora + count.trainable if setup.method in ("lora", "qlora")
                  else count.trainable, "lora_parameters": count.lora, "quantized_parameters":
                  count.linear if setup.method == "qlora" or setup.load_in_8bit else 0},
        "setup": dataclasses.asdict(setup),
        "hardware": {"gpus_per_node": gpus, "nodes": nodes, "gpu_memory_bytes": int(gpu_bytes),
                     "headroom": HEADROOM},
        "profiles": [dataclasses.asdict(e) for e in estimates],
        "recommended": recommended.name if recommended else None,
        "command": launch_command(recommended.name, address, world, nodes) if recommended else None,
    }


def launch_command(profile: str, recipe_address: str, processes: int, nodes: int = 1) -> str:
    """The exact `accelerate launch` line; paths relative to the repository when run from it, else absolute."""
    import shlex

    here = Path.cwd().resolve() == ROOT == PACKAGE.parent  # in the checkout
    options = (["--config_file", f"accelerate_configs/{profile}.yaml", "--num_processes", str(processes)] if here
               else PROFILES[profile].accelerate_args(processes))
    run = "sft/run.py" if here else str(RUN_SCRIPT)
    parts = ["accelerate", "launch", *options]
    if nodes > 1:
        parts += ["--num_machines", str(nodes), "--machine_rank", "NODE_RANK", "--main_process_ip", "NODE0_ADDRESS",
                  "--main_process_port", "29500"]
    return shlex.join(parts + [run, recipe_address])


def recommendation_advice(plan: dict) -> str:
    """What to change when nothing fits."""
    smallest = min((p for p in plan["profiles"] if p["applicable"]), key=lambda p: p["per_gpu_bytes"], default=None)
    need = f" (smallest estimate: {smallest['name']} at {smallest['per_gpu_bytes'] / GB:.1f} GB per GPU)" \
        if smallest else ""
    return ("no profile fits with 10% headroom" + need + "; lower max_length or per_device_train_batch_size, turn "
            "on gradient_checkpointing, use method: qlora, or add GPUs")


def format_bytes(n: float) -> str:
    return f"{n / GB:.1f}" if n >= 0.05 * GB or n == 0 else f"{n / GB:.3f}"


def render(plan: dict) -> str:
    """The plan as a table, the recommendation and the launch command."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    model, hw = plan["model"], plan["hardware"]
    gpu_gb = hw["gpu_memory_bytes"] / GB
    title = (f"{plan['recipe']}: {model['parameters']:,} parameters ({model['trainable_parameters']:,} trained) on "
             f"{hw['nodes']} x {hw['gpus_per_node']} GPUs of {gpu_gb:g} GB; GB per GPU")
    table = Table(title=title, title_justify="left")
    columns = ["weights", "lora", "gradients", "optimizer_states", "activations", "logits", "zero3_gather",
               "overhead"]
    table.add_column("profile")
    for c in columns:
        table.add_column(c.replace("_states", "").replace("zero3_", ""), justify="right")
    table.add_column("total", justify="right")
    table.add_column("fits")
    for p in plan["profiles"]:
        if not p["applicable"]:
            table.add_row(p["name"], *["-"] * (len(columns) + 1), f"n/a: {p['reason']}")
            continue
        mark = "yes" if p["fits"] else "tight" if p["per_gpu_bytes"] <= hw["gpu_memory_bytes"] else "no"
        if p["host_bytes_per_node"]:
            mark += f" (+{p['host_bytes_per_node'] / GB:.0f} GB CPU RAM per node)"
        table.add_row(p["name"], *[format_bytes(p["breakdown"][c]) for c in columns],
                      format_bytes(p["per_gpu_bytes"]), mark)
    out = StringIO()
    Console(file=out, width=200, no_color=True, highlight=False).print(table)
    setup = plan["setup"]
    out.write(f"micro-batch {setup['batch']} x {setup['seq']} tokens, gradient checkpointing "
              f"{'on' if setup['checkpointing'] else 'off'}, {'16-bit mixed precision' if setup['half'] else 'fp32'}; "
              f"'fits' leaves {HEADROOM:.0%} headroom; see `sft plan --help` for the model behind each column\n")
    if plan["recommended"]:
        out.write(f"recommended: {plan['recommended']} (the cheapest profile that fits)\n{plan['command']}\n")
    else:
        out.write(recommendation_advice(plan) + "\n")
    return out.getvalue()
