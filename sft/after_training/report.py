"""A run's curves as PNG files (train and eval loss, learning rate, grad norm, tokens per second over steps) and a
markdown summary beside them; a second run is overlaid for comparison. Read from output_dir/metrics.jsonl (written
by every sft run) or, failing that, trainer_state.json's log_history (the run's or its newest checkpoint's)."""

import json
import math
from pathlib import Path

from sft.errors import UserError
from sft.io import read_jsonl

# plot file -> [(series label, metric keys tried in order)]
PLOTS = {
    "loss": [("train loss", ("loss",)), ("eval loss", ("eval_loss",))],
    "learning_rate": [("learning rate", ("learning_rate",))],
    "grad_norm": [("grad norm", ("grad_norm",))],
    "tokens_per_second": [("tokens/s", ("tokens_per_second", "train_tokens_per_second"))],
}


def read_history(run_dir: str) -> tuple[list[dict], str]:
    """(log records in step order, where they came from) for a run directory."""
    from sft.train.checkpoints import CHECKPOINT

    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{run_dir}: not a directory; give a run's output_dir")
    metrics = root / "metrics.jsonl"
    if metrics.is_file():
        records = read_jsonl(metrics)
        if records:
            return latest_per_step(records), str(metrics)
    checkpoints = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT.match(p.name)))
    states = [root / "trainer_state.json"] + [p / "trainer_state.json" for _, p in reversed(checkpoints)]
    for state in states:
        if state.is_file():
            history = json.loads(state.read_text()).get("log_history") or []
            if history:
                return latest_per_step(history), str(state)
    raise UserError(f"{run_dir}: no trainer state (metrics.jsonl or trainer_state.json with a log history); "
                    "give the output_dir of a run that has logged at least one step")


def latest_per_step(records: list[dict]) -> list[dict]:
    """A resumed run appends steps it already logged; the later record of a (step, kind) wins."""
    kept = {}
    for record in records:
        kind = "eval" if any(k.startswith("eval_") for k in record) else "final" if "train_loss" in record else "train"
        kept[(record.get("step", 0), kind)] = record
    return sorted(kept.values(), key=lambda r: r.get("step", 0))


def series(records: list[dict], keys: tuple[str, ...]) -> tuple[list[int], list[float]]:
    for key in keys:
        points = [(r["step"], r[key]) for r in records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r]
        if points:
            return [p[0] for p in points], [p[1] for p in points]
    return [], []


def plot(runs: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, lines in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        drawn = 0
        for run_index, (run, records) in enumerate(runs.items()):
            for line_index, (label, keys) in enumerate(lines):
                steps, values = series(records, keys)
                if not steps:
                    continue
                style = "-" if line_index == 0 else "--"
                marker = "o" if len(steps) < 30 or line_index > 0 else None
                shown = f"{run}: {label}" if len(runs) > 1 else label
                ax.plot(steps, values, style, marker=marker, markersize=3, color=f"C{run_index}", label=shown)
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_ylabel(name.replace("_", " "))
        ax.set_title(" vs ".join(runs) + f": {name.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def summary(records: list[dict]) -> dict:
    def last(key):
        values = series(records, (key,))[1]
        return values[-1] if values else None

    eval_steps, eval_losses = series(records, ("eval_loss",))
    best = min(range(len(eval_losses)), key=eval_losses.__getitem__) if eval_losses else None
    speeds = series(records, ("tokens_per_second", "train_tokens_per_second"))[1]
    return {
        "steps": max((r.get("step", 0) for r in records), default=0),
        "final train loss": last("loss"),
        "final eval loss": eval_losses[-1] if eval_losses else None,
        "best eval loss": eval_losses[best] if best is not None else None,
        "best eval step": eval_steps[best] if best is not None else None,
        "best eval perplexity": math.exp(eval_losses[best]) if best is not None and eval_losses[best] < 700 else None,
        "final learning rate": last("learning_rate"),
        "max grad norm": max(series(records, ("grad_norm",))[1], default=None),
        "mean tokens/s": sum(speeds) / len(speeds) if speeds else None,
        "train runtime (s)": last("train_runtime"),
    }


def markdown(runs: dict[str, list[dict]], sources: dict[str, str], images: list[Path]) -> str:
    tables = {name: summary(records) for name, records in runs.items()}
    names = list(runs)
    lines = [f"# Training report: {' vs '.join(names)}", ""]
    lines += [f"- {name}: read from `{sources[name]}`" for name in names] + [""]
    lines += ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in tables[names[0]]:
        cells = [tables[n][key] for n in names]
        shown = [("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in cells]
        lines.append(f"| {key} | " + " | ".join(shown) + " |")
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def report(run_a: str, run_b: str | None = None, output: str | None = None) -> dict:
    """Write the plots and summary.md; returns {"output", "images", "summary"}."""
    runs, sources = {}, {}
    for run in [run_a] + ([run_b] if run_b else []):
        records, source = read_history(run)
        name = Path(run).resolve().name
        if name in runs:
            name = str(Path(run))
        runs[name], sources[name] = records, source
    out_dir = Path(output) if output else Path(run_a) / ("report" if not run_b else f"report-vs-{list(runs)[-1]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plot(runs, out_dir)
    text = markdown(runs, sources, images)
    (out_dir / "summary.md").write_text(text)
    return {"output": str(out_dir), "images": [str(p) for p in images], "summary": str(out_dir / "summary.md")}
