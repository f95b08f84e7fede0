"""Throughput, MFU and peak memory of every launch profile that fits, beside the planner's estimate.

    python bench/profiles.py [--model-config CONFIG.json] [--method full|lora|qlora] [--steps 30] [--warmup 5]
                             [--seq 2048] [--batch 4] [--gpus N] [--profiles zero2,zero3] [--peak-tflops T]
                             [--cpu] [--json FILE] [--keep DIR]

Runs offline: the model is built from a config with random weights (default: a Llama-3.2-1B-shaped config, or
e.g. recipes/tiers/configs/Llama-3.1-8B/config.json), the tokenizer is sft's locally built character tokenizer,
the data is synthetic text of exactly --seq tokens per row. Each profile trains --steps steps through the real
run path (`accelerate launch --config_file accelerate_configs/NAME.yaml ... sft/run.py`); each process reports
its peak memory. Printed per profile: tokens/s per device over the steps after --warmup, MFU = 6 * N * tokens/s
per device / the device's dense bf16 peak (A100 312, H100/H200 989 TFLOP/s, or --peak-tflops), peak memory
(allocated and reserved) and the planner's estimate.

On a machine without a GPU it prints the planner's estimates only, unless --cpu asks for the same measurement on
CPU processes over gloo (float32, peak memory = each process's peak resident set, sft's tiny Llama by default).
DeepSpeed profiles are skipped with a note when deepspeed is not installed; FSDP2 profiles are measured on GPUs
and skipped with a note under --cpu (accelerate applies FSDP to GPU runs only).
"""

import argparse
import importlib.util
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sft.errors import UserError, exit_on_user_error  # light: no torch

# Dense bf16 peak FLOP/s by GPU name (substring match, first wins).
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12)]
# Llama-3.2-1B's shape: big enough to load a GPU, small enough for every profile on one 80 GB GPU.
DEFAULT_CONFIG = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                  "rope_theta": 500000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
NEEDED = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "yaml", "click"]


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


def missing(modules: list[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def build_model(folder: Path, model_config: str | None, weights: bool, cpu: bool) -> None:
    """sft's character tokenizer and the config, and (for a measured run) random bf16 weights, as a model folder.
    Without --model-config: Llama-3.2-1B's shape on GPU, sft's tiny Llama (sft tiny-model) on CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from sft.tiny import build_model_config, build_tokenizer

    tokenizer = build_tokenizer("char")
    if model_config:
        config = AutoConfig.from_pretrained(model_config)
    else:
        config = build_model_config(len(tokenizer)) if cpu else LlamaConfig(**DEFAULT_CONFIG)
    if config.vocab_size < len(tokenizer):
        raise UserError(f"--model-config {model_config}: vocab_size {config.vocab_size} is smaller than the bench's "
                 f"character tokenizer ({len(tokenizer)} tokens); use a config with a larger vocab_size")
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                                      tokenizer.pad_token_id)
    tokenizer.save_pretrained(folder)
    if weights:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    else:
        config.save_pretrained(folder)  # the planner needs only the config


def write_data(path: Path, rows: int, seq: int) -> None:
    """Rows of 2 * `seq` characters, which the run truncates to exactly `seq` tokens (the character tokenizer
    makes one token per character), so every micro-batch is full and tokens/s counts no padding."""
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            text = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(2 * seq))
            f.write(json.dumps({"text": text}) + "\n")


def write_recipe(path: Path, model: Path, data: Path, args) -> None:
    import yaml

    recipe = {"model_name_or_path": str(model), "dataset_name": str(data), "output_dir": str(path.parent / "unused"),
              "method": args.method, "dtype": "bfloat16", "bf16": True, "gradient_checkpointing": True,
              "max_length": args.seq, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
              "max_steps": args.steps, "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-5,
              "report_to": "none", "seed": 0, "include_num_input_tokens_seen": "non_padding"}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def worker(recipe: str, report: str, overrides: list[str]) -> None:
    """Inside `accelerate launch`: the real run, then this process's peak memory."""
    import resource

    import torch

    from sft.run import train

    train(recipe, overrides)
    if torch.cuda.is_available():
        peak = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
    else:  # Linux reports the peak resident set in KiB
        peak = {"allocated": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "reserved": None}
    Path(report, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(peak))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as sft/run.py: everything is written; skip a teardown that gloo/DeepSpeed threads can abort


def throughput(output_dir: Path, warmup: int) -> float | None:
    """Tokens/s over all processes after `warmup` steps, from the run's per-step log (what `sft report` reads)."""
    from sft.after_training.report import read_history

    records, _ = read_history(str(output_dir))
    steps = [r for r in records if "loss" in r and "num_input_tokens_seen" in r and "time" in r]
    if len(steps) <= warmup + 1:
        return None
    first, last = steps[warmup], steps[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", help="config.json to build the model from (default: Llama-3.2-1B's "
                        "shape; with --cpu, sft's tiny Llama)")
    parser.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of tokens/s")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="per-device micro-batch")
    parser.add_argument("--gpus", type=int, help="processes (default: every GPU; with --cpu, 2)")
    parser.add_argument("--profiles", help="comma-separated profiles (default: every one the planner says fits)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak per device for MFU (default: by GPU name)")
    parser.add_argument("--cpu", action="store_true", help="measure on CPU processes over gloo (a small model)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", help="work in this folder and keep the runs (default: a temporary folder)")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "REPORT_DIR"), help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never wait on a network that is not there
    if args.worker:
        return worker(args.worker[0], args.worker[1], extra)
    from sft.launch.profiles import PROFILES

    unknown = [p for p in (args.profiles or "").split(",") if p and p not in PROFILES]
    if unknown:
        raise UserError(f"--profiles: unknown {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    if args.warmup >= args.steps - 1:
        raise UserError(f"--warmup {args.warmup}: leave at least two logged steps after it (--steps {args.steps})")
    absent = missing(NEEDED + (["bitsandbytes"] if args.method == "qlora" else []))
    if absent:
        raise UserError(f"missing Python packages: {', '.join(absent)}; install sft beside the preinstalled torch "
                        "with `pip install -e .` (offline: `pip install --no-index --find-links WHEELS -e .`)")

    if args.keep:
        work = Path(args.keep)
        if work.exists() and any(work.iterdir()):
            raise UserError(f"--keep {work}: folder is not empty; name a new or empty one")
        work.mkdir(parents=True, exist_ok=True)
        bench(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="sft-bench-profiles-") as tmp:  # the model folder can be GBs
            bench(args, Path(tmp))


def bench(args, work: Path) -> None:
    import torch

    from sft.launch.memory import GB
    from sft.launch.plan import make_plan
    from sft.launch.profiles import PROFILES
    from sft.recipe.load import load_recipe

    on_gpu = torch.cuda.is_available() and not args.cpu
    measure = on_gpu or args.cpu
    gpus = args.gpus or (torch.cuda.device_count() if on_gpu else 2 if args.cpu else 1)
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU" if args.cpu else "no GPU"
    memory = torch.cuda.get_device_properties(0).total_memory / GB if on_gpu else 80.0
    build_model(work / "model", args.model_config, weights=measure, cpu=args.cpu)
    write_data(work / "data.jsonl", rows=args.steps * args.batch * gpus + 8, seq=args.seq)
    recipe_path = work / "recipe.yaml"
    write_recipe(recipe_path, work / "model", work / "data.jsonl", args)
    # On CPU the run trains in float32 (sft/train/hardware.py), so plan float32 there.
    plan = make_plan(load_recipe(str(recipe_path)), gpus, memory, half=not args.cpu, recipe_address=str(recipe_path))
    estimates = {p["name"]: p for p in plan["profiles"]}
    n_params = plan["model"]["parameters"]
    chosen = args.profiles.split(",") if args.profiles else [p["name"] for p in plan["profiles"]
                                                             if p["applicable"] and p["fits"]]
    print(f"model: {n_params:,} parameters ({args.method}), micro-batch {args.batch} x {args.seq} tokens, "
          f"{gpus} x {name}" + (f" ({memory:.0f} GB)" if on_gpu else "") +
          f"; profiles: {', '.join(chosen) or 'none fits'}")
    if not measure:
        print("no GPU: cannot measure tokens/s, MFU or peak GPU memory (--cpu measures on CPU processes); the "
              f"planner's estimates per GPU (for {gpus} x 80 GB):")
        for p in plan["profiles"]:
            if p["applicable"]:
                print(f"  {p['name']:14s} estimate {p['per_gpu_bytes'] / GB:6.1f} GB  fits: {p['fits']}")
        return

    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if args.cpu else None  # --cpu on a GPU machine: still CPU
    results = [run_profile(profile, PROFILES[profile], gpus, recipe_path, work, args.warmup, n_params, peak,
                           estimates[profile]["per_gpu_bytes"], env) for profile in chosen]
    print_table(results, "peak RSS GB" if args.cpu else "peak alloc GB")
    print(f"MFU: 6 x {n_params:,} FLOPs per token over a dense bf16 peak of {peak / 1e12:g} TFLOP/s"
          if peak else f"MFU: unknown peak for {name} (pass --peak-tflops)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": name, "processes": gpus, "parameters": n_params, "method": args.method, "seq": args.seq,
            "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "peak_flops": peak,
            "profiles": results}, indent=2))


def run_profile(name: str, profile, gpus: int, recipe_path: Path, work: Path, warmup: int, n_params: int,
                peak: float | None, estimate: int, env: dict | None) -> dict:
    """One `accelerate launch` of the bench's worker under a profile, and what it measured."""
    result = {"name": name, "status": "ok", "estimate_bytes": estimate, "tokens_per_second_per_device": None,
              "mfu": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "seconds": None,
              "output_dir": str(work / f"run-{name}"), "reason": None}
    if profile.deepspeed_config and importlib.util.find_spec("deepspeed") is None:
        return {**result, "status": "skipped", "reason": "deepspeed is not installed "
                "(pip install --no-build-isolation deepspeed)"}
    if profile.fsdp and env is not None:  # --cpu
        return {**result, "status": "skipped", "reason": "FSDP runs on GPUs only (accelerate ignores its plugin on "
                "CPU)"}
    out, report = work / f"run-{name}", work / f"report-{name}"
    report.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *profile.accelerate_args(gpus),
           str(Path(__file__).resolve()), "--worker", str(recipe_path), str(report), "--output_dir", str(out)]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    result["seconds"] = round(time.time() - started, 1)
    (work / f"log-{name}.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["?"]
        return {**result, "status": "failed", "reason": lines[-1][:200]}
    tokens = throughput(out, warmup)
    per_device = tokens / gpus if tokens else None
    peaks = [json.loads(f.read_text()) for f in sorted(report.glob("rank*.json"))]
    reserved = [p["reserved"] for p in peaks if p["reserved"] is not None]
    return {**result, "tokens_per_second_per_device": per_device,
            "mfu": 6 * n_params * per_device / peak if per_device and peak else None,
            "peak_allocated_bytes": max(p["allocated"] for p in peaks) if peaks else None,
            "peak_reserved_bytes": max(reserved) if reserved else None}


def print_table(results: list[dict], memory_column: str) -> None:
    from sft.launch.memory import GB

    def number(value, scale=1.0, form="{:.1f}"):
        return "-" if value is None else form.format(value / scale)

    print(f"{'profile':14s} {'tokens/s/dev':>12s} {'MFU':>6s} {memory_column:>13s} {'reserved GB':>11s} "
          f"{'estimate GB':>11s}  status")
    for r in results:
        status = f"ok ({r['seconds']:.0f} s)" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        print(f"{r['name']:14s} {number(r['tokens_per_second_per_device'], form='{:.0f}'):>12s} "
              f"{number(r['mfu'], 0.01, '{:.1f}%'):>6s} {number(r['peak_allocated_bytes'], GB, '{:.2f}'):>13s} "
              f"{number(r['peak_reserved_bytes'], GB, '{:.2f}'):>11s} {number(r['estimate_bytes'], GB, '{:.2f}'):>11s}"
              f"  {status}")


if __name__ == "__main__":
    exit_on_user_error(main)
