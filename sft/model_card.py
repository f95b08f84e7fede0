"""The model card (README.md) of a pushed run: base model, method, datasets, eval metrics, package versions, the
resolved recipe and the one command that reproduces the run. Built only from output_dir, never from secrets."""

import json
import re
from pathlib import Path

import yaml

from sft.train.checkpoints import complete_checkpoints

LOCAL = re.compile(r"^(/|\.|~)")


def _is_hub_name(name) -> bool:
    return isinstance(name, str) and name.count("/") == 1 and not LOCAL.match(name) and not Path(name).exists()


def datasets_of(recipe: dict) -> list[str]:
    names = [recipe.get("dataset_name")]
    mixture = recipe.get("dataset_mixture") or {}
    names += [d.get("id") for d in mixture.get("datasets", []) if isinstance(d, dict)]
    names += [d.get("path") for d in recipe.get("datasets") or [] if isinstance(d, dict)]
    return [n for n in dict.fromkeys(names) if n]


def metrics_of(run_dir: Path) -> dict:
    """Eval metrics: results files written in output_dir, else the last evaluation in the newest checkpoint;
    and the final training loss."""
    found = {}
    for name in ("all_results.json", "eval_results.json", "train_results.json"):
        path = run_dir / name
        if path.is_file():
            found.update({k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))})
    checkpoints = complete_checkpoints(run_dir)
    if checkpoints:
        history = json.loads((checkpoints[-1] / "trainer_state.json").read_text()).get("log_history", [])
        evals = [e for e in history if any(k.startswith("eval_") for k in e)]
        if evals:
            found = {**{k: v for k, v in evals[-1].items() if k.startswith("eval_")}, **found}
        losses = [e for e in history if "loss" in e]
        if losses and "train_loss" not in found:
            found["final_loss"] = losses[-1]["loss"]
    return found


def build_card(run_dir, repo_id: str) -> str:
    from sft.hub import redact

    run_dir = Path(run_dir)
    recipe_text = (run_dir / "recipe.yaml").read_text()
    recipe, _ = redact(yaml.safe_load(recipe_text) or {})
    provenance = recipe.get("provenance") or {}
    versions = provenance.get("versions") or {}
    base = recipe.get("model_name_or_path")
    method = recipe.get("method") or "full"
    datasets = datasets_of(recipe)
    metrics = metrics_of(run_dir)
    adapter = (run_dir / "adapter_config.json").is_file()

    front = {"library_name": "peft" if adapter else "transformers", "tags": ["sft", "trl", method],
             "pipeline_tag": "text-generation"}
    if _is_hub_name(base):
        front["base_model"] = base
    hub_datasets = [d for d in datasets if _is_hub_name(d)]
    local_data = [d for d in datasets if d not in hub_datasets]
    if hub_datasets:
        front["datasets"] = hub_datasets
    evals = {k: v for k, v in metrics.items() if k.startswith("eval_")}
    if evals:
        front["model-index"] = [{"name": repo_id.split("/")[-1], "results": [{
            "task": {"type": "text-generation"},
            "metrics": [{"type": k, "name": k, "value": v} for k, v in evals.items()]}]}]

    # Local version tags (torch's +cpu/+cu124) are not on PyPI; the install line names the release.
    pinned = " ".join(f"{name}=={str(version).split('+')[0]}" for name, version in versions.items() if name != "sft")
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        f"{'A LoRA adapter for' if adapter else 'A fine-tune of'} `{base}` ({method}), trained with "
        f"sft {versions.get('sft', '')} on top of TRL's SFTTrainer.", "",
        "## Reproduce", "",
        "```bash",
        *([f"pip install {pinned}"] if pinned else []),
        f"sft train hf://{repo_id}/recipe.yaml",
        "```", "",
        "`recipe.yaml` in this repo is the resolved recipe: every effective value of the run.",
        *([f"It names data on the training machine ({', '.join(f'`{d}`' for d in local_data)}): publish the "
           "recipe with `sft publish-recipe RECIPE REPO --with-data`, or point it at Hub datasets, to train it "
           "elsewhere."] if local_data else []), "",
        "## Data", "",
        *([f"- `{d}`" for d in datasets] or ["- (none recorded)"]),
    ]
    stats = provenance.get("data")
    if isinstance(stats, dict) and stats:
        lines += ["", "Data statistics: " + ", ".join(f"{k} {v}" for k, v in stats.items()
                                                       if isinstance(v, (int, float)))]
    lines += ["", "## Metrics", ""]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()] \
        if metrics else ["(no evaluation recorded)"]
    if metrics:
        lines[len(lines) - len(metrics):len(lines) - len(metrics)] = ["| metric | value |", "|---|---|"]
    lines += ["", "## Package versions", "", *[f"- {k} {v}" for k, v in versions.items()], "",
              "## Resolved recipe", "", "```yaml",
              yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=120).strip(), "```", ""]
    return "\n".join(lines)
