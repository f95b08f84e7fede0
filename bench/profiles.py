"""Throughput, MFU and peak memory of every launch profile that fits, beside the planner's estimate.

    python bench/profiles.py [--model-config CONFIG.json] [--method full|lora|qlora] [--steps 30]
                             [--seq 2048] [--batch 4] [--gpus N] [--profiles zero2,zero3]

Runs offline: the model is built from a config with random weights (default: a Llama-3.2-1B-shaped config, or
e.g. recipes/tiers/configs/Llama-3.1-8B/config.json), the tokenizer is sft's locally built character tokenizer,
the data is synthetic text of exactly --seq tokens per row. Each profile trains --steps steps through the real
run path (`accelerate launch --config_file accelerate_configs/NAME.yaml ... sft/run.py`); each process reports
its peak GPU memory. Printed per profile: tokens/s per GPU over the steps after --warmup, MFU = 6 * N * tokens/s
per GPU / the GPU's dense bf16 peak (A100 312, H100/H200 989 TFLOP/s), peak memory (allocated and reserved) and
the planner's estimate. Without a GPU it says so and prints the planner's estimates only.
"""

import argparse
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

# Dense bf16 peak FLOP/s by GPU name (substring match, first wins).
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12)]
# Llama-3.2-1B's shape: big enough to load a GPU, small enough for every profile on one 80 GB GPU.
DEFAULT_CONFIG = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                  "rope_theta": 500000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


def build_model(folder: Path, model_config: str | None, weights: bool) -> None:
    """sft's character tokenizer and the config, and (for a GPU run) random bf16 weights, as a model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char")
    config = AutoConfig.from_pretrained(model_config) if model_config else LlamaConfig(**DEFAULT_CONFIG)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                                      tokenizer.pad_token_id)
    tokenizer.save_pretrained(folder)
    if weights:
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    else:
        config.save_pretrained(folder)  # the planner needs only the config


def write_data(path: Path, rows: int, seq: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            text = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(seq))
            f.write(json.dumps({"text": text}) + "\n")


def write_recipe(path: Path, model: Path, data: Path, args) -> None:
    import yaml

    recipe = {"model_name_or_path": str(model), "dataset_name": str(data), "output_dir": str(path.parent / "unused"),
              "method": args.method, "dtype": "bfloat16", "bf16": True, "gradient_checkpointing": True,
              "max_length": args.seq, "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
              "max_steps": args.steps, "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-5,
              "report_to": "none", "seed": 0, "include_num_input_tokens_seen": "all"}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def worker(recipe: str, report: str, overrides: list[str]) -> None:
    """Inside `accelerate launch`: the real run, then this process's peak GPU memory."""
    import torch

    from sft.run import train

    train(recipe, overrides)
    rank = int(os.environ.get("RANK", "0"))
    peak = {"allocated": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()}
    Path(report, f"rank{rank}.json").write_text(json.dumps(peak))


def throughput(output_dir: Path, warmup: int) -> float | None:
    """Tokens/s over all processes after `warmup` steps, from the run's per-step log (metrics.jsonl)."""
    log = output_dir / "metrics.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r and "num_input_tokens_seen" in r and "time" in r]
    if len(steps) <= warmup + 1:
        return None
    first, last = steps[warmup], steps[-1]
    return (last["num_input_tokens_seen"] - first["num_input_tokens_seen"]) / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", help="config.json to build the model from (default: Llama-3.2-1B shape)")
    parser.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of tokens/s")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="per-device micro-batch")
    parser.add_argument("--gpus", type=int, help="processes (default: every GPU)")
    parser.add_argument("--profiles", help="comma-separated profiles (default: every one the planner says fits)")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "REPORT_DIR"), help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], extra)

    with tempfile.TemporaryDirectory(prefix="sft-bench-profiles-") as tmp:  # the model folder can be GBs
        bench(args, Path(tmp))


def bench(args, work: Path) -> None:
    import torch

    from sft.plan import GB, make_plan
    from sft.profiles import PROFILES
    from sft.recipe import load_recipe

    on_gpu = torch.cuda.is_available()
    gpus = args.gpus or (torch.cuda.device_count() if on_gpu else 1)
    name = torch.cuda.get_device_name(0) if on_gpu else "no GPU"
    memory = torch.cuda.get_device_properties(0).total_memory / GB if on_gpu else 80.0
    build_model(work / "model", args.model_config, weights=on_gpu)
    write_data(work / "data.jsonl", rows=args.steps * args.batch * gpus + 8, seq=args.seq)
    recipe_path = work / "recipe.yaml"
    write_recipe(recipe_path, work / "model", work / "data.jsonl", args)
    plan = make_plan(load_recipe(str(recipe_path)), gpus, memory, half=True, recipe_address=str(recipe_path))
    estimates = {p["name"]: p for p in plan["profiles"]}
    n_params = plan["model"]["parameters"]
    chosen = args.profiles.split(",") if args.profiles else [p["name"] for p in plan["profiles"]
                                                             if p["applicable"] and p["fits"]]
    unknown = [p for p in chosen if p not in PROFILES]
    if unknown:
        sys.exit(f"--profiles: unknown {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    print(f"model: {n_params / 1e9:.2f}B parameters ({args.method}), micro-batch {args.batch} x {args.seq} tokens, "
          f"{gpus} x {name} ({memory:.0f} GB); profiles: {', '.join(chosen) or 'none fits'}")
    if not on_gpu:
        print("no GPU: cannot measure tokens/s, MFU or peak GPU memory; the planner's estimates per GPU "
              f"(for {gpus} x 80 GB):")
        for p in plan["profiles"]:
            if p["applicable"]:
                print(f"  {p['name']:14s} estimate {p['per_gpu_bytes'] / GB:6.1f} GB  fits: {p['fits']}")
        return
    peak = peak_flops(name)
    header = f"{'profile':14s} {'tokens/s/GPU':>12s} {'MFU':>6s} {'peak alloc GB':>13s} {'reserved GB':>11s} " \
             f"{'estimate GB':>11s}  status"
    rows = []
    for profile in chosen:
        out, report = work / f"run-{profile}", work / f"report-{profile}"
        report.mkdir()
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / f"{profile}.yaml"), "--num_processes", str(gpus)]
        if PROFILES[profile].deepspeed_config:
            cmd += ["--deepspeed_config_file", str(ROOT / PROFILES[profile].deepspeed_config)]
        cmd += [str(Path(__file__).resolve()), "--worker", str(recipe_path), str(report), "--output_dir", str(out)]
        started = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        estimate = estimates[profile]["per_gpu_bytes"] / GB
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:150]
            rows.append(f"{profile:14s} {'-':>12s} {'-':>6s} {'-':>13s} {'-':>11s} {estimate:11.1f}  failed: {tail}")
            continue
        tokens = throughput(out, args.warmup)
        per_gpu = tokens / gpus if tokens else None
        mfu = f"{6 * n_params * per_gpu / peak:.1%}" if per_gpu and peak else "n/a"
        peaks = [json.loads(f.read_text()) for f in report.glob("rank*.json")]
        alloc = max(p["allocated"] for p in peaks) / GB if peaks else float("nan")
        reserved = max(p["reserved"] for p in peaks) / GB if peaks else float("nan")
        rows.append(f"{profile:14s} {per_gpu or float('nan'):12.0f} {mfu:>6s} {alloc:13.1f} {reserved:11.1f} "
                    f"{estimate:11.1f}  ok ({time.time() - started:.0f} s)")
    print(header)
    print("\n".join(rows))
    print(f"MFU: 6 x {n_params / 1e9:.2f}B FLOPs per token over the dense bf16 peak of {name} "
          f"({peak / 1e12:.0f} TFLOP/s)" if peak else f"MFU: unknown peak for {name}")


if __name__ == "__main__":
    main()
