"""The resolved recipe (output_dir/recipe.yaml): every effective value of a run, as a recipe that reproduces it,
with where it came from (provenance) and never a secret.

A run started from a resolved recipe (it has `provenance`) does not push to the Hub unless its command line asks
(`--push_to_hub true` or `--hub_model_id`): see sft/recipe/finalize.py.
"""

import dataclasses
import enum
import re
from pathlib import Path


from sft.io import recipe_yaml, write_atomic
from sft.recipe.fields import Recipe
from sft.train.hardware import HARDWARE_KEYS

SECRET_KEYS = ("hub_token", "push_to_hub_token")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)


def redact(values: dict) -> tuple[dict, list[str]]:
    """A copy without tokens: hub_token keys, and env entries whose names look secret. Returns what was removed."""
    removed = [k for k in values if k in SECRET_KEYS]
    clean = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    if isinstance(clean.get("env"), dict):
        secret = [k for k in clean["env"] if SECRET_NAME.search(str(k))]
        removed += [f"env.{k}" for k in secret]
        clean["env"] = {k: v for k, v in clean["env"].items() if k not in secret} or None
        if clean["env"] is None:
            del clean["env"]
    return clean, removed



def resolved_values(recipe: Recipe) -> dict:
    """Every effective value, flat, as a recipe. Values chosen for this machine's hardware are the recipe's own, or
    left out where it set none, so the file asks for the same run on other hardware too; values finalize changed
    for this run alone (push_to_hub) are written as asked."""
    out = {}
    for section in ("model", "script", "mixture", "training", "sft"):
        obj = getattr(recipe, section)
        for f in dataclasses.fields(obj):
            if not f.init or f.name.startswith("_") or f.name in SECRET_KEYS or f.name == "provenance":
                continue
            if f.name in HARDWARE_KEYS:
                if f.name in recipe.explicit:
                    out[f.name] = _plain(recipe.explicit[f.name])
                continue
            out[f.name] = _plain(recipe.asked[f.name] if f.name in recipe.asked else getattr(obj, f.name))
    if out.get("env"):  # a token set through `env:` (HF_TOKEN, WANDB_API_KEY, ...) is never written either
        out = redact(out)[0]
    return out


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("sft", "trl", "transformers", "peft", "accelerate", "datasets", "torch", "bitsandbytes",
                 "deepspeed"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_resolved(recipe: Recipe, path: Path, extra_provenance: dict | None = None) -> None:
    values = resolved_values(recipe)
    values["provenance"] = {"source": recipe.source, "versions": package_versions(), **(extra_provenance or {})}
    text = "# Resolved by sft: every effective value. `sft train <this file>` reproduces the run.\n"
    text += recipe_yaml(values)
    write_atomic(path, text)
