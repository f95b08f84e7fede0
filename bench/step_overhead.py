"""What sft's callbacks cost per training step: `sft train`'s trainer (the callbacks sft/run.py gives it: metrics
file, divergence guard, stop on request, complete-checkpoint marker, samples and early stopping when the recipe
asks) against a bare TRL SFTTrainer with the same prepared data, model, settings and seed.

The two alternate in pairs, each a fresh trainer on a freshly loaded model, so that a change in the machine's load
hits both alike; odd pairs run sft first, even pairs the bare trainer first (sft, bare, bare, sft, ...), so that
neither always runs first. Each run is timed from the end of its --warmup'th step to the end of its last:
per-step wall time of each, and their ratio per pair; the figure is the median of the pairs' ratios. The CPU time
of the process per step is printed beside it: on a machine other jobs load, it moves less than wall time.

    OMP_NUM_THREADS=1 python bench/step_overhead.py [--recipe recipes/quickstart.yaml] [--model DIR]
        [--steps 400] [--warmup 20] [--pairs 4] [--keep DIR] [--json FILE]

Without --model it builds the README's quickstart model (`sft tiny-model --hidden-size 128 --layers 4`).
The target (issue 13): a ratio of at most 1.02.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's sft, also when run as a script

TARGET = 1.02


def step_timer():
    """A callback that notes the wall and CPU time at the end of each step (given to both trainers, last)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((time.perf_counter(), time.process_time()))

    return StepTimes()


def one_run(with_sft: bool, recipe_address: str, overrides: list[str], output_dir: Path,
            prepared) -> list[tuple[float, float]]:
    """Train once; the (wall, CPU) time at the end of every step."""
    from trl import SFTTrainer

    from sft.model import load_model, peft_config
    from sft.recipe.load import load_recipe
    from sft.run import run_callbacks
    from sft.train.callbacks import trackers_last

    tokenizer, added_tokens, data = prepared
    recipe = load_recipe(recipe_address, [*overrides, "--output_dir", str(output_dir)])
    model = load_model(recipe, tokenizer, added_tokens)
    callbacks = run_callbacks(recipe, tokenizer, data.eval_rows)[0] if with_sft else []
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=recipe.training, train_dataset=data.train, eval_dataset=data.eval,
                         processing_class=tokenizer, peft_config=peft_config(recipe), callbacks=[*callbacks, timer])
    if with_sft:
        trackers_last(trainer)
    trainer.train()
    return timer.times


def callbacks_cpu_per_step(with_sft: bool, recipe_address: str, overrides: list[str], output_dir: Path,
                           prepared, steps: int = 20000) -> float:
    """CPU seconds the callbacks take per step on their own, without a model: the Trainer's callback handler driven
    through a step's events (begin, pre-optimizer, optimizer, end) `steps` times, logging, saving and evaluation
    off. A figure the machine's load moves much less than a training step's."""
    from transformers import TrainerControl, TrainerState
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    from sft.recipe.load import load_recipe
    from sft.run import run_callbacks

    tokenizer, _, data = prepared
    recipe = load_recipe(recipe_address, [*overrides, "--output_dir", str(output_dir)])
    callbacks = run_callbacks(recipe, tokenizer, data.eval_rows)[0] if with_sft else []
    handler = CallbackHandler([DefaultFlowCallback, *callbacks], None, tokenizer, None, None)
    args = recipe.training
    state, control = TrainerState(max_steps=steps + 1, logging_steps=steps + 1, save_steps=steps + 1), TrainerControl()
    handler.on_train_begin(args, state, control)
    started = time.process_time()
    for step in range(1, steps + 1):
        state.global_step = step
        handler.on_step_begin(args, state, control)
        handler.on_pre_optimizer_step(args, state, control)
        handler.on_optimizer_step(args, state, control)
        handler.on_step_end(args, state, control)
    elapsed = time.process_time() - started
    handler.on_train_end(args, state, control)
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart.yaml"))
    parser.add_argument("--model", type=Path, help="The model to train (default: the quickstart's tiny model).")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20, help="Steps of each run left out of its timing.")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="Keep the model and runs in this folder.")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args()
    if args.steps - args.warmup < 2:
        parser.exit(2, f"error: --warmup {args.warmup}: leave at least two timed steps after it "
                       f"(--steps {args.steps})\n")
    if args.pairs < 1:
        parser.exit(2, f"error: --pairs {args.pairs}: at least 1\n")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    from sft.templates.chat import apply_template
    from sft.data.prepare import prepare_data
    from sft.model import load_tokenizer
    from sft.recipe.load import load_recipe

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model is None:
            model = root / "tiny-model"
            subprocess.run([sys.executable, "-m", "sft.cli", "tiny-model", str(model), "--hidden-size", "128",
                            "--layers", "4", "--seed", "0"], cwd=REPO, check=True, capture_output=True)
        # Same settings for both: the recipe's, for --steps steps, without progress bars or saving.
        overrides = ["--model_name_or_path", str(model), "--max_steps", str(args.steps), "--save_strategy", "no",
                     "--disable_tqdm", "true"]
        recipe = load_recipe(args.recipe, [*overrides, "--output_dir", str(root / "prepare")])
        tokenizer = load_tokenizer(recipe)
        added_tokens = apply_template(tokenizer, recipe)
        prepared = (tokenizer, added_tokens, prepare_data(recipe, tokenizer))  # once, for every run

        load = os.getloadavg()
        print(f"transformers {transformers.__version__}, trl {trl.__version__}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{Path(args.recipe).name}: {args.steps} steps a run, timed after step {args.warmup}, "
              f"{args.pairs} pairs (sft, bare, bare, sft, ...)")
        print(f"{'pair':>4} {'sft ms/step':>12} {'bare ms/step':>13} {'ratio':>7}   {'CPU: sft ms':>11} "
              f"{'bare ms':>8} {'ratio':>7}")
        pairs = []
        for pair in range(1, args.pairs + 1):
            per_step, cpu_per_step = {}, {}
            for kind in ("sft", "bare") if pair % 2 else ("bare", "sft"):
                times = one_run(kind == "sft", args.recipe, overrides, root / f"run-{pair}-{kind}", prepared)
                if len(times) != args.steps:
                    sys.exit(f"error: the {kind} run trained {len(times)} steps, not {args.steps} (too little data "
                             "for that many steps?)")
                first, timed = times[args.warmup - 1 if args.warmup else 0], args.steps - max(args.warmup, 1)
                per_step[kind] = (times[-1][0] - first[0]) / timed
                cpu_per_step[kind] = (times[-1][1] - first[1]) / timed
            ratio, cpu_ratio = per_step["sft"] / per_step["bare"], cpu_per_step["sft"] / cpu_per_step["bare"]
            pairs.append({"sft_seconds_per_step": per_step["sft"], "bare_seconds_per_step": per_step["bare"],
                          "ratio": ratio, "sft_cpu_seconds_per_step": cpu_per_step["sft"],
                          "bare_cpu_seconds_per_step": cpu_per_step["bare"], "cpu_ratio": cpu_ratio})
            print(f"{pair:>4} {per_step['sft'] * 1e3:>12.3f} {per_step['bare'] * 1e3:>13.3f} {ratio:>7.3f}   "
                  f"{cpu_per_step['sft'] * 1e3:>11.3f} {cpu_per_step['bare'] * 1e3:>8.3f} {cpu_ratio:>7.3f}",
                  flush=True)
        median = statistics.median(p["ratio"] for p in pairs)
        sft_median = statistics.median(p["sft_seconds_per_step"] for p in pairs)
        bare_median = statistics.median(p["bare_seconds_per_step"] for p in pairs)
        cpu_median = statistics.median(p["cpu_ratio"] for p in pairs)
        print(f"median: sft {sft_median * 1e3:.3f} ms/step, bare {bare_median * 1e3:.3f} ms/step, ratio "
              f"{median:.3f} (target <= {TARGET}: {'met' if median <= TARGET else 'NOT met'}); CPU time ratio "
              f"{cpu_median:.3f}")
        alone = {kind: callbacks_cpu_per_step(kind == "sft", args.recipe, overrides, root / f"callbacks-{kind}",
                                              prepared) for kind in ("sft", "bare")}
        extra = alone["sft"] - alone["bare"]
        bare_cpu = statistics.median(p["bare_cpu_seconds_per_step"] for p in pairs)
        print(f"callbacks alone, a step without logging: sft {alone['sft'] * 1e6:.1f} us, bare "
              f"{alone['bare'] * 1e6:.1f} us of CPU; sft's {extra * 1e6:.1f} us more are "
              f"{extra / bare_cpu * 100:.3f}% of a bare step's CPU time")
        if args.json:
            args.json.write_text(json.dumps({"recipe": args.recipe, "steps": args.steps, "warmup": args.warmup,
                                             "load_average": load, "pairs": pairs, "ratio": median,
                                             "cpu_ratio": cpu_median,
                                             "callbacks_cpu_seconds_per_step": alone}, indent=1))


if __name__ == "__main__":
    main()
