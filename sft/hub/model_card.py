"""The model card (README.md) of a pushed run: base model, method, datasets, eval metrics, package versions, the
resolved recipe and the one command that reproduces the run. Built only from output_dir, never from secrets."""

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from sft.io import recipe_yaml
from sft.recipe.resolved import redact
from sft.train.checkpoints import complete_checkpoints

LOCAL = re.compile(r"^(/|\.|~)")
# huggingface_hub renders the front matter from ModelCardData (`card_data`); the body is sft's.
CARD_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}\n"


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


def card_data(recipe: dict, metrics: dict, repo_id: str, adapter: bool) -> ModelCardData:
    """The card's metadata, as huggingface_hub validates and writes it (front matter; `model-index` from the eval
    metrics, on the first Hub dataset or, for local data, on the run's own eval split)."""
    base = recipe.get("model_name_or_path")
    hub_datasets = [d for d in datasets_of(recipe) if _is_hub_name(d)]
    evaluated_on = hub_datasets[0] if hub_datasets else "eval split"
    evals = [EvalResult(task_type="text-generation", dataset_type=evaluated_on, dataset_name=evaluated_on,
                        metric_type=k, metric_name=k, metric_value=v)
             for k, v in metrics.items() if k.startswith("eval_")]
    return ModelCardData(library_name="peft" if adapter else "transformers",
                         tags=["sft", "trl", recipe.get("method") or "full"], pipeline_tag="text-generation",
                         base_model=base if _is_hub_name(base) else None, datasets=hub_datasets or None,
                         model_name=repo_id.split("/")[-1] if evals else None, eval_results=evals or None)


def build_card(run_dir, repo_id: str) -> str:
    run_dir = Path(run_dir)
    recipe_text = (run_dir / "recipe.yaml").read_text()
    recipe, _ = redact(yaml.safe_load(recipe_text) or {})
    provenance = recipe.get("provenance") or {}
    versions = provenance.get("versions") or {}
    base = recipe.get("model_name_or_path")
    method = recipe.get("method") or "full"
    datasets = datasets_of(recipe)
    local_data = [d for d in datasets if not _is_hub_name(d)]
    metrics = metrics_of(run_dir)
    adapter = (run_dir / "adapter_config.json").is_file()

    # Local version tags (torch's +cpu/+cu124) are not on PyPI; the install line names the release.
    pinned = " ".join(f"{name}=={str(version).split('+')[0]}" for name, version in versions.items() if name != "sft")
    lines = [
        f"# {repo_id.split('/')[-1]}", "",
        f"{'A LoRA adapter for' if adapter else 'A fine-tune of'} `{base}` ({method}), trained with "
        f"sft {versions.get('sft', '')} on top of TRL's SFTTrainer.", "",
        "## Reproduce", "",
        "```bash",
        *([f"pip install {pinned}"] if pinned else []),
        f"sft train hf://{repo_id}/recipe.yaml",
        "```", "",
        "`recipe.yaml` in this repo is the resolved recipe: every effective value of the run. Trained from it, a "
        "run does not push to this repo unless its command line says where (`--push_to_hub true --hub_model_id "
        "YOUR/REPO`).",
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
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines += ["(no evaluation recorded)"]
    lines += ["", "## Package versions", "", *[f"- {k} {v}" for k, v in versions.items()], "",
              "## Resolved recipe", "", "```yaml",
              recipe_yaml(recipe).strip(), "```", ""]
    card = ModelCard.from_template(card_data(recipe, metrics, repo_id, adapter), template_str=CARD_TEMPLATE,
                                   body="\n".join(lines))
    return str(card)
