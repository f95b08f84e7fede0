"""The GPU check: one call on a machine with a GPU and PyTorch but no network.

    python bench/gpu/check.py [--wheels bench/gpu/wheels] [--minutes 8] [--seq 2048] [--batch 8]
                              [--seconds-per-config 10] [--configs NAME,...] [--peak-tflops T] [--json FILE]
    python bench/gpu/check.py --dry-run      # the same path on CPU with a tiny model, a few steps per config

1. Installs what sft needs and the machine lacks from the wheels bench/gpu/fetch_wheels.py downloaded (pip with
   --no-index: a requirement the machine already satisfies is kept; torch is never touched).
2. Builds a Llama-3.2-1B-shaped model from its config (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192,
   vocabulary 128,256, tied embeddings; random bf16 weights) with sft's locally built character tokenizer, and
   synthetic documents of varied length (so packing matters).
3. Trains it, one process per configuration, through sft's own path (load_recipe, then sft.run.checked_trainer,
   then trainer.train): full fine-tuning in bf16, LoRA and QLoRA, each with sdpa, with flash attention 2/3 when
   flash_attn is installed, and with Liger's kernels when liger-kernel imports; each packed two ways:
   `bfd` (best-fit packing, padding-free: each document attends to itself only, sequence boundaries from
   position_ids) and `wrapped` (documents concatenated and cut into rows of max_length, padding-free off: the
   attention runs over the whole row). `sft train` refuses packing on GPU without flash attention
   (sft/launch/profiles.py); those rows are measured anyway, through the same functions, and marked `refused`.
   One more row, full-sdpa-padded, is what `sft train` runs with sdpa: whole documents in padded batches.
4. Prints, per configuration: tokens/s (after --warmup steps, for --seconds-per-config or --steps), the achieved
   TFLOP/s and MFU with method-aware FLOPs (flops_per_token below), peak GPU memory (PyTorch's allocated and
   reserved peaks, and the device's: reserved peak plus what CUDA holds outside PyTorch), and `sft plan`'s
   estimate for the same recipe with estimate / device peak. Results also go to $OUT/gpu_check.json when OUT is
   set (or --json). The CUDA allocator is the one `sft train` sets up (expandable segments, unless
   PYTORCH_CUDA_ALLOC_CONF is set: `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False` measures torch's default).

Everything stays within --minutes (default 8): configurations that would start too late are listed as skipped.

Not covered on CPU, left for a GPU run (README, "Hardware profiles"): the fsdp2 and fsdp2_qlora profiles end to end.
On CPU the suite proves torch's fully_shard over gloo (tests/launch/test_fsdp2.py), accelerate's reading of both
profiles and sft's one-line CPU refusal (tests/launch/test_profiles.py); a GPU run should show `sft launch --profile
fsdp2` (full, LoRA) and `fsdp2_qlora` on 2 GPUs giving one GPU's first loss, saving weights that load, and resuming.
"""

import argparse
import importlib.util
import json
import os
import random
import re
import resource
import string
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GB = 1e9
# Llama-3.2-1B's shape (its config.json, without the rope scaling that changes no FLOPs or memory).
LLAMA_1B = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "model_type": "llama",
            "architectures": ["LlamaForCausalLM"]}
# The same shape scaled down for --dry-run: grouped-query attention and tied embeddings kept.
TINY = {**LLAMA_1B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024}
# Dense bf16 peak FLOP/s by GPU name (first match wins): NVIDIA's datasheets, without sparsity.
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12),
             ("L40S", 362e12)]
METHODS = ("full", "lora", "qlora")
PACKINGS = ("bfd", "wrapped")
# The baseline `sft train` runs with sdpa on a GPU (it refuses packing there without flash attention): padded
# batches of whole documents, measured for full fine-tuning only (the time budget).
PADDED = {"name": "full-sdpa-padded", "method": "full", "attn_implementation": "sdpa", "use_liger_kernel": False,
          "packing_strategy": "padded"}
LORA_RANK = 16
# Never installed by this script: the machine's own CUDA build of PyTorch.
NEVER_INSTALL = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


# ---------------------------------------------------------------------------------------------------------------
# 1. Dependencies (standard library and `packaging` only: nothing of sft's stack is imported before this)


LIGER = "liger-kernel>=0.6,<1"  # pyproject.toml's `liger` extra


def needed_requirements(gpu: bool) -> list[str]:
    """sft's dependencies (pyproject.toml's [project] dependencies list), and liger-kernel on a GPU machine."""
    text = (ROOT / "pyproject.toml").read_text()  # read without tomllib, which Python 3.10 lacks
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.DOTALL | re.MULTILINE).group(1)
    return re.findall(r'^\s*"([^"]+)"', block, re.MULTILINE) + ([LIGER] if gpu else [])


def unmet(requirements: list[str]) -> list[str]:
    """The requirements this Python does not satisfy (missing, or installed at a version outside the range)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (installed: {installed})")
    return missing


def wheel_versions(folder: Path) -> dict[str, str]:
    """Package name -> version of each wheel in the folder (from the file names)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    found = {}
    for wheel in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found[canonicalize_name(name)] = str(version)
    return found


def install_missing(folder: Path, requirements: list[str], dry_run: bool) -> list[str]:
    """pip-install from `folder` the requirements this Python does not meet; one line per step for the log."""
    wanted = [r.split(" (installed")[0] for r in unmet(requirements)]
    if not wanted:
        return ["dependencies: all satisfied, nothing installed"]
    lines = [f"dependencies not satisfied: {', '.join(unmet(requirements))}"]
    if dry_run or not folder.is_dir():
        why = "--dry-run" if dry_run else f"no wheel folder {folder} (run bench/gpu/fetch_wheels.py where pip works)"
        return lines + [f"not installing ({why})"]
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(folder),
           "--no-cache-dir", "--disable-pip-version-check", "--root-user-action=ignore"]
    # pip's resolver keeps every installed package that satisfies what is asked (torch among them).
    started = time.time()
    proc = subprocess.run(pip + wanted, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # Usually a requirement of a carried wheel that the machine's own big library (pyarrow, numpy) does not
        # meet: install the carried wheels that are missing or older here, without their dependencies.
        lines.append("pip could not resolve everything: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
        from importlib.metadata import PackageNotFoundError, version

        from packaging.version import Version

        chosen = []
        for name, carried in sorted(wheel_versions(folder).items()):
            if NEVER_INSTALL.match(name):
                continue
            try:
                if Version(version(name)) >= Version(carried):
                    continue
            except PackageNotFoundError:
                pass
            chosen.append(f"{name}=={carried}")
        proc = subprocess.run(pip + ["--no-deps"] + chosen, capture_output=True, text=True, check=False)
        lines.append(f"installed without dependency resolution: {', '.join(chosen)}" if proc.returncode == 0 else
                     "pip --no-deps failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1])
    else:
        lines.append(f"installed from {folder} in {time.time() - started:.0f} s: {', '.join(wanted)}")
    still = unmet(requirements)
    if still:
        lines.append(f"still not satisfied: {', '.join(still)}")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# 2. Model, data, recipes


def build_model(folder: Path, shape: dict) -> None:
    """The config's model with random bf16 weights, and sft's character tokenizer (its ids fit any vocabulary
    larger than ~100), as an ordinary model folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char")
    config = LlamaConfig(**{k: v for k, v in shape.items() if k not in ("model_type", "architectures")},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1.2B weights: seconds on a GPU
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def write_documents(path: Path, rows: int, seq: int, seed: int = 0) -> list[int]:
    """Plain-text documents of 1/8 to 7/8 of max_length characters (one token each with the character tokenizer):
    unpacked, a batch would be half padding. Returns their lengths in characters."""
    rng = random.Random(seed)
    lengths = [rng.randint(max(8, seq // 8), max(9, seq * 7 // 8)) for _ in range(rows)]
    with path.open("w") as f:
        for n in lengths:
            f.write(json.dumps({"text": "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(n))}) + "\n")
    return lengths


def configurations(gpu: bool) -> tuple[list[dict], list[str]]:
    """Every configuration this machine can run, most important first, and a note per variant left out."""
    attentions, notes = [("sdpa", "sdpa", False)], []
    for implementation, module in (("flash_attention_2", "flash_attn"), ("flash_attention_3", "flash_attn_interface")):
        if gpu and importlib.util.find_spec(module):
            attentions.append((implementation.replace("_attention_", ""), implementation, False))
        else:
            notes.append(f"{implementation}: {'no GPU' if not gpu else module + ' is not installed'}")
    if gpu and importlib.util.find_spec("liger_kernel"):
        attentions.append(("liger", "sdpa", True))
    else:
        notes.append(f"liger: {'no GPU' if not gpu else 'liger-kernel is not installed'}")
    if importlib.util.find_spec("bitsandbytes") is None:
        notes.append("qlora: bitsandbytes is not installed")
    methods = [m for m in METHODS if m != "qlora" or importlib.util.find_spec("bitsandbytes")]
    configs = [{"name": f"{method}-{label}-{packing}", "method": method, "attn_implementation": implementation,
                "use_liger_kernel": liger, "packing_strategy": packing}
               for method in methods for label, implementation, liger in attentions for packing in PACKINGS]
    configs.insert(len(PACKINGS), PADDED)  # after full fine-tuning's sdpa rows
    return configs, notes


def write_recipe(path: Path, model: Path, data: Path, config: dict, args) -> None:
    import yaml

    recipe = {
        "model_name_or_path": str(model), "dataset_name": str(data), "output_dir": str(path.parent / "run"),
        "method": config["method"], "dtype": "bfloat16", "bf16": True,
        "attn_implementation": config["attn_implementation"], "use_liger_kernel": config["use_liger_kernel"],
        "packing": config["packing_strategy"] != "padded", "max_length": args.seq,
        "per_device_train_batch_size": args.batch, "gradient_accumulation_steps": 1,
        # No recomputation: what MFU counts is what runs (1B fits an 80 GB GPU without checkpointing).
        "gradient_checkpointing": False, "max_steps": args.steps, "logging_steps": 10, "save_strategy": "no",
        "learning_rate": 1e-5, "report_to": "none", "seed": 0, "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0, "disable_tqdm": True,
    }
    if recipe["packing"]:
        recipe["packing_strategy"] = config["packing_strategy"]
    if config["method"] != "full":
        recipe |= {"lora_r": LORA_RANK, "lora_alpha": 2 * LORA_RANK, "lora_target_modules": ["all-linear"]}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


# ---------------------------------------------------------------------------------------------------------------
# 3. FLOPs


def flops_per_token(method: str, matmul_params: int, lora_params: int, layers: int, attention_width: int,
                    keys_per_token: float) -> float:
    """Model FLOPs per trained token, forward and backward.

    A matmul with P weights costs 2P per token forward; backward costs 2P for the input's gradient and 2P for
    the weight's gradient. Full fine-tuning: 6P. LoRA and QLoRA: the frozen base needs no weight gradient but
    still passes the gradient down to the adapters of earlier layers: 4P, plus 6 per adapter parameter. P counts
    every linear layer's weight and the LM head (the tied embedding matrix used as the head counts once; the
    embedding lookup is no matmul); QLoRA's dequantization is no model FLOP.
    Attention: per layer and token, Q.K^T and attention x V cost 2 * width * keys each (width = heads x
    head_dim; grouped KV heads do not shrink it), keys = the causal keys the token attends to (mean over the
    data: (L + 1) / 2 for a sequence of L); backward twice the forward: 3 * 4 * width * keys per layer, the
    same for every method (the activations' gradients are needed either way).
    """
    weights = 6 * matmul_params if method == "full" else 4 * matmul_params + 6 * lora_params
    return weights + 12 * layers * attention_width * keys_per_token


def keys_per_token(sequence_lengths) -> float:
    """Mean causal keys per token over sequences: sum L(L+1)/2 / sum L."""
    lengths = [int(n) for n in sequence_lengths]
    return sum(n * (n + 1) / 2 for n in lengths) / max(1, sum(lengths))


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


# ---------------------------------------------------------------------------------------------------------------
# 4. One configuration (in its own process on a GPU: Liger patches transformers' classes, peaks are per process)


def run_configuration(recipe_path: str, warmup: int, seconds: float) -> dict:
    """Train one recipe through sft's path; tokens/s over the steps after `warmup`, peaks, and the attention
    keys per token of the packed data it trained on."""
    import torch
    from transformers import TrainerCallback

    from sft.errors import UserError
    from sft.recipe.finalize import finalize_run
    from sft.recipe.load import load_recipe
    from sft.run import checked_trainer

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        """Wall time and tokens at each step end (synchronized); stops after `seconds` of timed steps."""

        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            mark = (time.perf_counter(), int(state.num_input_tokens_seen), state.global_step)
            if state.global_step == warmup:
                self.start = mark
            elif state.global_step > warmup:
                self.end = mark
                if seconds and mark[0] - self.start[0] >= seconds and state.global_step - warmup >= 2:
                    control.should_training_stop = True

    quiet()
    recipe = load_recipe(recipe_path)
    refused = None
    try:
        finalize_run(recipe)  # as `sft train`: the launch's fixes (and a push request, none here)
    except UserError as err:  # what `sft train` would stop at; the same functions measure it anyway
        refused = str(err).split(": ", 1)[-1]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer, _, _, _, _ = checked_trainer(recipe)
    timer = StepTimer()
    trainer.add_callback(timer)
    result = trainer.train()
    dataset = trainer.train_dataset
    if "seq_lengths" in dataset.column_names:  # bfd: each document attends to itself
        lengths = [n for row in dataset["seq_lengths"] for n in row]
    else:  # wrapped: rows of max_length; padded: one document per row
        lengths = [len(ids) for ids in dataset["input_ids"]]
    out = {"refused": refused, "steps": trainer.state.global_step, "train_loss": result.training_loss,
           "keys_per_token": keys_per_token(lengths), "tokens_per_second": None, "timed_steps": 0}
    if timer.start and timer.end:
        out["timed_steps"] = timer.end[2] - timer.start[2]
        out["tokens_per_second"] = (timer.end[1] - timer.start[1]) / (timer.end[0] - timer.start[0])
    if cuda:
        free, total = torch.cuda.mem_get_info()
        outside = (total - free) - torch.cuda.memory_reserved()  # CUDA context, cuBLAS/NCCL, kernels' images
        out |= {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                "peak_device_bytes": torch.cuda.max_memory_reserved() + outside}
    else:  # Linux reports the peak resident set in KiB: the whole process's, over every configuration it ran
        out |= {"peak_allocated_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "peak_reserved_bytes": None, "peak_device_bytes": None}
    trainer.end()  # as sft.run.train: the run's trackers and process group closed
    return out


def quiet() -> None:
    """No progress bars or library advice in the check's output: its table is what is read."""
    import datasets
    from transformers.utils import logging as transformers_logging

    from sft.console import quiet_library_noise

    quiet_library_noise()
    warnings.filterwarnings("ignore", category=FutureWarning)  # renamed arguments inside the libraries
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # CPU dry run
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def worker(recipe_path: str, result_path: str, warmup: int, seconds: float) -> None:
    result = run_configuration(recipe_path, warmup, seconds)
    Path(result_path).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is written; skip a teardown that can hang on dataloader or compile threads


def measure(config: dict, recipe_path: Path, args, isolate: bool, time_left: float) -> dict:
    """Run one configuration (in a child process when `isolate`) and return what it measured or why it failed."""
    if not isolate:
        try:
            return run_configuration(str(recipe_path), args.warmup, args.seconds_per_config)
        except Exception as err:  # noqa: BLE001 - one configuration's failure is a row of the table, not the end
            return {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"}
    result_path = recipe_path.with_suffix(".result.json")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(recipe_path), str(result_path),
               "--warmup", str(args.warmup), "--seconds-per-config", str(args.seconds_per_config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)}
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=time_left,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {time_left:.0f} s (the check's time budget)"}
    (recipe_path.parent / "log.txt").write_text(proc.stdout + proc.stderr)
    if args.log:  # what each configuration's process printed, for a failure read back from the GPU machine
        with open(args.log, "a") as log:
            log.write(f"===== {config['name']} (exit code {proc.returncode})\n{(proc.stdout + proc.stderr)[-20000:]}\n")
    if proc.returncode != 0 or not result_path.exists():
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit code {proc.returncode}"]
        return {"error": lines[-1][:300]}
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# 5. The table


def row(result: dict) -> str:
    def number(value, scale=1.0, form="{:.1f}"):
        return "-" if value is None else form.format(value / scale)

    if result["status"] != "ok":
        return f"{result['name']:24s} {result['status']}: {result.get('reason', '')}"
    return (f"{result['name']:24s} {'refused' if result['refused'] else 'runs':>7s} {result['timed_steps']:>5d} "
            f"{number(result['tokens_per_second'], form='{:.0f}'):>9s} {number(result['tflops'], form='{:.0f}'):>6s} "
            f"{number(result['mfu'], 0.01, '{:.1f}%'):>6s} {number(result['peak_allocated_bytes'], GB, '{:.2f}'):>8s} "
            f"{number(result['peak_reserved_bytes'], GB, '{:.2f}'):>8s} "
            f"{number(result['peak_device_bytes'], GB, '{:.2f}'):>8s} "
            f"{number(result['estimate_bytes'], GB, '{:.2f}'):>7s} "
            f"{number(result['estimate_ratio'], form='{:.2f}'):>6s}")


HEADER = (f"{'config':24s} {'sft':>7s} {'steps':>5s} {'tokens/s':>9s} {'TFLOPs':>6s} {'MFU':>6s} {'alloc GB':>8s} "
          f"{'resv GB':>8s} {'dev GB':>8s} {'plan GB':>7s} {'plan/dev':>6s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny model of the same shape, a few steps")
    parser.add_argument("--wheels", default=str(ROOT / "bench" / "gpu" / "wheels"))
    parser.add_argument("--minutes", type=float, default=8.0, help="time for the whole check (default 8)")
    parser.add_argument("--seq", type=int, help="max_length (default 2048; --dry-run 64)")
    parser.add_argument("--batch", type=int, help="micro-batch rows (default 8; --dry-run 2)")
    parser.add_argument("--steps", type=int, help="max steps per configuration (default 200; --dry-run 4)")
    parser.add_argument("--warmup", type=int, help="steps left out of tokens/s (default 3; --dry-run 1)")
    parser.add_argument("--seconds-per-config", type=float, help="timed training per configuration after the "
                        "warmup (default 10; --dry-run 0: --steps only)")
    parser.add_argument("--configs", help="comma-separated names to run (default: all this machine can)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, help="one process per configuration "
                        "(default on a GPU; --dry-run runs them in this process)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak for MFU (default: by GPU name)")
    parser.add_argument("--json", help="write the results here (default: $OUT/gpu_check.json when OUT is set)")
    parser.add_argument("--log", help="append each configuration's output here (default: $OUT/gpu_check_workers.log "
                        "when OUT is set)")
    parser.add_argument("--work", help="work folder (default: a new temporary one)")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--build-model", nargs=2, metavar=("FOLDER", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never wait on a network
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sft.train.hardware import default_cuda_allocator  # standard library only

    default_cuda_allocator()  # before torch, as `sft train`; each configuration's process inherits it
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.warmup or 0, args.seconds_per_config or 0)
    if args.build_model:
        return build_model(Path(args.build_model[0]), TINY if args.build_model[1] == "dry" else LLAMA_1B)
    dry = args.dry_run
    defaults = {"seq": (2048, 64), "batch": (8, 2), "steps": (200, 4), "warmup": (3, 1), "seconds_per_config": (10, 0)}
    for key, (gpu_value, dry_value) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, dry_value if dry else gpu_value)
    if args.warmup > args.steps - 2:
        sys.exit(f"error: --warmup {args.warmup}: leave at least two timed steps (--steps {args.steps})")
    started = time.time()
    deadline = started + args.minutes * 60

    listed = nvidia_smi_gpu()
    for line in install_missing(Path(args.wheels), needed_requirements(listed is not None and not dry), dry):
        print(line, flush=True)
    if dry:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a dry run on a GPU machine still runs on CPU

    import tempfile

    import torch

    # This process never touches the GPU (no CUDA context of its own): each configuration's process measures the
    # device's memory as its own.
    gpu = torch.cuda.is_available() and not dry
    device, memory_gb = (listed if gpu and listed else ("GPU" if gpu else "CPU", 80.0))
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
    isolate = gpu if args.isolate is None else args.isolate
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = TINY if dry else LLAMA_1B
    allocator = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    print(f"torch {torch.__version__} on {device}" + (f" ({memory_gb:.0f} GB)" if gpu else "") +
          (f"; peak {peak / 1e12:g} TFLOP/s" if peak else "; peak unknown (--peak-tflops)") +
          f"; CUDA allocator: {allocator}", flush=True)

    configs, notes = configurations(gpu)
    if args.configs:
        chosen = args.configs.split(",")
        unknown = [c for c in chosen if c not in {c["name"] for c in configs}]
        if unknown:
            sys.exit(f"error: --configs: {', '.join(unknown)} cannot run here; choose from "
                     f"{', '.join(c['name'] for c in configs)}")
        configs = [c for c in configs if c["name"] in chosen]
    for note in notes:
        print(f"left out: {note}")

    model = work / "model"
    if not (model / "config.json").exists():
        if isolate:  # on the GPU, in a process of its own
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-model", str(model),
                            "dry" if dry else "1b"], cwd=ROOT, check=True)
        else:
            build_model(model, shape)
    data = work / "data.jsonl"
    # Enough documents for every step of the longest run (a document averages half of max_length).
    write_documents(data, rows=2 * args.steps * args.batch + 16, seq=args.seq)
    print(f"model: Llama-3.2-1B shape{' scaled down' if dry else ''} ({shape['num_hidden_layers']} layers, hidden "
          f"{shape['hidden_size']}), built in {work}; {args.batch} x {args.seq} tokens per step; "
          f"{time.time() - started:.0f} s so far", flush=True)

    from transformers import AutoConfig

    from sft.launch.memory import count_parameters
    from sft.launch.plan import make_plan
    from sft.recipe.load import load_recipe

    model_config = AutoConfig.from_pretrained(model)
    width = model_config.num_attention_heads * (model_config.head_dim or
                                                model_config.hidden_size // model_config.num_attention_heads)
    if args.log is None and os.environ.get("OUT"):
        args.log = str(Path(os.environ["OUT"], "gpu_check_workers.log"))
    results = []
    report = Path(args.json) if args.json else Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") \
        else None
    print(HEADER)
    for config in configs:
        folder = work / config["name"]
        folder.mkdir(exist_ok=True)
        recipe_path = folder / "recipe.yaml"
        write_recipe(recipe_path, model, data, config, args)
        recipe = load_recipe(str(recipe_path))
        count = count_parameters(model_config, recipe)
        plan = make_plan(recipe, 1, memory_gb, half=gpu, recipe_address=str(recipe_path))
        estimate = next(p["per_gpu_bytes"] for p in plan["profiles"] if p["name"] == "single_gpu")
        result = {**config, "status": "ok", "estimate_bytes": estimate, "parameters": count.total,
                  "matmul_parameters": count.linear + (count.lm_head or count.embedding),
                  "lora_parameters": count.lora, "refused": None, "tokens_per_second": None, "tflops": None,
                  "mfu": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None, "peak_device_bytes": None,
                  "estimate_ratio": None, "timed_steps": 0}
        time_left = deadline - time.time()
        if time_left < (60 if isolate else 5):
            result |= {"status": "skipped", "reason": f"time budget (--minutes {args.minutes:g}) spent"}
        else:
            began = time.time()
            measured = measure(config, recipe_path, args, isolate, time_left - 5)
            result["seconds"] = round(time.time() - began, 1)
            if "error" in measured:
                result |= {"status": "failed", "reason": measured["error"]}
            else:
                result |= measured
                result["flops_per_token"] = flops_per_token(config["method"], result["matmul_parameters"],
                                                            count.lora, count.layers, width, result["keys_per_token"])
                if result["tokens_per_second"]:
                    result["tflops"] = result["tokens_per_second"] * result["flops_per_token"] / 1e12
                    result["mfu"] = result["tflops"] * 1e12 / peak if peak else None
                if result["peak_device_bytes"]:
                    result["estimate_ratio"] = estimate / result["peak_device_bytes"]
        results.append(result)
        print(row(result), flush=True)
        if report:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps({"device": device, "peak_flops": peak, "dry_run": dry, "seq": args.seq,
                                          "batch": args.batch, "torch": torch.__version__, "allocator": allocator,
                                          "model": shape, "left_out": notes, "results": results}, indent=2))
    print(f"MFU: model FLOPs per token (full 6P, LoRA/QLoRA 4P + 6 x adapter, attention 12 x layers x width x "
          f"causal keys) x tokens/s / {peak / 1e12 if peak else '?'} TFLOP/s; dev GB = PyTorch's reserved peak + "
          f"CUDA outside PyTorch; plan = `sft plan` single_gpu; refused = `sft train` stops before training "
          f"(measured through the same functions); {time.time() - started:.0f} s in all", flush=True)


def nvidia_smi_gpu() -> tuple[str, float] | None:
    """(name, memory in GB) of the first GPU as nvidia-smi lists it (no CUDA context here), or None."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    name, mib = proc.stdout.splitlines()[0].rsplit(",", 1)
    return name.strip(), float(mib) * 2**20 / GB


if __name__ == "__main__":
    main()
