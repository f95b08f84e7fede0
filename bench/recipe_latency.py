"""How long a recipe-reading command takes to report a typo or a bad value, and `sft train --help-all` to print,
measured side by side in one run (the runs of each command alternate, so a busy machine slows all alike).

    python bench/recipe_latency.py                         # against `from trl import SFTConfig`, 5 runs each
    python bench/recipe_latency.py --before /path/to/old   # also the same commands run from another sft checkout
    python bench/recipe_latency.py --repeat 1 --json out.json

Baseline: `python -c "from trl import SFTConfig"`, which every recipe-reading command paid before it could report
anything (a bare `import trl` is lazy and imports almost nothing). Each command is
run as a user runs it (`python -m sft.cli ...` in a fresh process, this checkout on PYTHONPATH); its exit code and
error line are checked, so a run that reports something else fails the bench. Figures: the median wall time of
the runs, and each as a ratio of the baseline (or of --before). The cache of recipe keys read from the packages'
source is warmed once first; its cold cost is printed on its own line."""

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
# name -> (sft arguments with {dir} for the scratch folder, exit code, text the output must contain)
CASES = {
    "typo": (["train", "{dir}/typo.yaml"], 2, "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    "bad value": (["train", "{dir}/bad.yaml"], 2, "learning_rate must be 0 or more, got -0.1"),
    "bad override": (["train", "{dir}/ok.yaml", "--packing", "maybe"], 2,
                     "--packing must be true or false, got 'maybe'"),
    "--help-all": (["train", "--help-all"], 0, "eval_strategy (IntervalStrategy | str = 'no')"),
}
RECIPES = {
    "typo.yaml": "model_name_or_path: m\noutput_dir: out\nlearning_rat: 1.0e-4\n",
    "bad.yaml": "model_name_or_path: m\noutput_dir: out\nlearning_rate: -0.1\n",
    "ok.yaml": "model_name_or_path: m\noutput_dir: out\n",
}


def timed(cmd: list[str], env: dict, expect_rc: int | None = None, expect: str | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=env["BENCH_DIR"])
    seconds = time.perf_counter() - started
    if expect_rc is not None and (proc.returncode != expect_rc or expect not in proc.stdout + proc.stderr):
        sys.exit(f"error: {' '.join(cmd)} exited {proc.returncode} without {expect!r}:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another sft checkout to run the same commands from")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.before is not None and not (args.before / "sft" / "cli.py").is_file():
        parser.exit(2, f"error: --before {args.before}: not an sft checkout (no sft/cli.py)\n")

    scratch = Path(tempfile.mkdtemp(prefix="sft-latency-"))
    for name, text in RECIPES.items():
        (scratch / name).write_text(text)

    def env_for(tree: Path) -> dict:
        return {**os.environ, "PYTHONPATH": str(tree), "SFT_CACHE_DIR": str(scratch / "cache"),
                "OMP_NUM_THREADS": "1", "BENCH_DIR": str(scratch)}

    trees = {"after": REPO, **({"before": args.before} if args.before else {})}
    args_of = {name: [a.replace("{dir}", str(scratch)) for a in sft_args] for name, (sft_args, _, _) in CASES.items()}
    command = [sys.executable, "-m", "sft.cli"]
    cold = timed(command + args_of["typo"], env_for(REPO), *CASES["typo"][1:])  # writes the recipe-key cache

    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):  # alternate: every command sees the same load
        baseline_cmd = [sys.executable, "-c", "from trl import SFTConfig"]
        runs.setdefault("baseline", []).append(timed(baseline_cmd, env_for(REPO)))
        for name, (_, rc, expect) in CASES.items():
            for side, tree in trees.items():
                runs.setdefault(f"{side}: {name}", []).append(timed(command + args_of[name], env_for(tree), rc, expect))

    baseline = statistics.median(runs["baseline"])
    print(f"{args.repeat} run(s) each, alternating; median wall seconds; ratio to the baseline"
          + (" and to --before" if args.before else ""))
    print(f"  {'baseline: from trl import SFTConfig':<34} {baseline:6.2f} s")
    results = {"repeat": args.repeat, "baseline_s": baseline, "cold_cache_typo_s": cold, "cases": {}}
    for name in CASES:
        after = statistics.median(runs[f"after: {name}"])
        line = f"  {'after: ' + name:<34} {after:6.2f} s  {after / baseline:5.2f} x baseline"
        results["cases"][name] = {"after_s": after}
        if args.before:
            before = statistics.median(runs[f"before: {name}"])
            line += f"  (before: {before:6.2f} s, after/before {after / before:5.2f})"
            results["cases"][name]["before_s"] = before
        print(line)
    print(f"  {'typo, recipe-key cache cold':<34} {cold:6.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
