"""Does the quickstart really learn? Train it for several seeds and score each on the held-out words.

For each seed: build the README's tiny model with that seed (`sft tiny-model ... --seed S`), train the recipe with
`--seed S` (the README's command, nothing else changed), then score it with the README's last quickstart command
(`sft eval RUN --data HELDOUT --case-sensitive`): greedy answers with the saved chat template and generation
config, each counted only when exactly right, case included (an answer that does not stop cannot match). Prints,
per recipe and seed, the training time, the last logged loss and the score, then the worst score over the seeds
and the installed versions that produced it.

    python bench/quickstart.py [--recipes quickstart.yaml,quickstart_chat.yaml] [--seeds 0,1,2,3,4] [--keep DIR]

The target (issue "The front door"): every seed >= 0.95 in <= 2 minutes of training on 2 CPU cores.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
HELDOUT = {"quickstart.yaml": RECIPES / "data/uppercase_heldout.jsonl",
           "quickstart_chat.yaml": RECIPES / "data/uppercase_chat_heldout.jsonl"}
MODEL_ARGS = ["--hidden-size", "128", "--layers", "4"]  # the README's quickstart model


def sft(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sft.cli", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sft {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def one_run(recipe: str, seed: int, root: Path) -> dict:
    model, out = root / f"tiny-model-{seed}", root / f"{Path(recipe).stem}-{seed}"
    sft("tiny-model", str(model), *MODEL_ARGS, "--seed", str(seed))
    started = time.time()
    sft("train", str(RECIPES / recipe), "--model_name_or_path", str(model), "--output_dir", str(out),
        "--seed", str(seed))
    wall = time.time() - started
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = next(row for row in reversed(history) if "train_runtime" in row and "train_loss" in row)
    last_logged = next(row for row in reversed(history) if "loss" in row)
    # The README's scoring command: greedy, exact match with case; an answer that does not stop cannot match.
    scored = sft("eval", str(out), "--data", str(HELDOUT[recipe]), "--metrics", "exact_match", "--case-sensitive",
                 "--max-new-tokens", "40", "--json")
    score = json.loads(scored.stdout)["exact_match"]
    return {"recipe": recipe, "seed": seed, "train_seconds": final["train_runtime"], "wall_seconds": wall,
            "steps": final.get("step"), "last_loss": last_logged["loss"], "heldout_exact": score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="quickstart.yaml,quickstart_chat.yaml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--keep", type=Path, help="Keep the models and runs in this folder.")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in HELDOUT]
    if unknown:
        sys.exit(f"--recipes: no held-out data known for {', '.join(unknown)}; choose from {', '.join(HELDOUT)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers
    import trl

    print(f"transformers {transformers.__version__}, trl {trl.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'recipe':<22} {'seed':>4} {'steps':>6} {'train s':>8} {'last loss':>10} {'held-out exact':>15}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for recipe in recipes:
            for seed in seeds:
                r = one_run(recipe, seed, root)
                results.append(r)
                print(f"{r['recipe']:<22} {r['seed']:>4} {r['steps']:>6} {r['train_seconds']:>8.1f} "
                      f"{r['last_loss']:>10.4f} {r['heldout_exact']:>15.2f}", flush=True)
    for recipe in recipes:
        mine = [r for r in results if r["recipe"] == recipe]
        print(f"{recipe}: worst held-out exact match {min(r['heldout_exact'] for r in mine):.2f}, slowest training "
              f"{max(r['train_seconds'] for r in mine):.1f} s over seeds {','.join(map(str, seeds))}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
