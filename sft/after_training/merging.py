"""Merging a LoRA or QLoRA adapter into its base for serving, and a 4-bit (NF4) export.

The base is always loaded unquantized in the chosen dtype (for QLoRA too: merging into 4-bit weights would
round the adapter away). The output is a standalone safetensors model with the run's tokenizer, chat template
and a generation config that stops on the trained end-of-turn token. It is written into a temporary folder
beside the target and moved into place only when complete."""

import json
import shutil
import tempfile
from pathlib import Path

from sft.errors import UserError

# Config keys that fix the shapes an adapter's weights were made for.
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")


def adapter_folder(path: str) -> Path:
    """The adapter in a run's output_dir (or its newest checkpoint), or the adapter folder itself."""
    from sft.after_training.generation import model_folder

    folder = model_folder(path)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{path}: not a LoRA/QLoRA adapter (no adapter_config.json); a full fine-tune is already "
                        "a standalone model")
    return folder


def check_same_base(adapter: Path, trained_on: str, chosen: str, allow_other: bool = False) -> None:
    """Refuse a base whose architecture differs from the one the adapter was trained on."""
    if Path(trained_on).resolve() == Path(chosen).resolve():
        return
    config_a, config_b = Path(trained_on) / "config.json", Path(chosen) / "config.json"
    if not config_b.is_file():
        raise UserError(f"--base {chosen}: not a model folder (no config.json)")
    if not config_a.is_file():
        return  # the training base is not here to compare with; peft still checks every weight's shape
    a, b = json.loads(config_a.read_text()), json.loads(config_b.read_text())
    differ = [f"{k} {a.get(k)} vs {b.get(k)}" for k in SHAPE_KEYS if a.get(k) != b.get(k)]
    if not differ and not allow_other:
        key = differing_weight(Path(trained_on), Path(chosen))
        differ = [f"same architecture but different weights ({key}); pass --allow-other-base to merge anyway"] if (
            key) else []
    if differ:
        raise UserError(f"--base {chosen}: not the base the adapter in {adapter} was trained on ({trained_on}): "
                        f"{'; '.join(differ)}")


def differing_weight(a: Path, b: Path) -> str | None:
    """The first of a few sampled weights that differs between two model folders (e.g. a base and its instruct
    fine-tune share every shape), or None. Compared in float32 with a tolerance, so a dtype change is not a
    different model."""
    import torch
    from safetensors import safe_open

    def where(folder):
        found = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    found[key] = (path, handle.get_slice(key).get_shape())
        return found

    left, right = where(a), where(b)
    # Norm weights start as ones in every model, so sample the smallest other matrices of the first block.
    common = [k for k in left.keys() & right.keys() if "norm" not in k and len(left[k][1]) == 2]
    for key in sorted(common, key=lambda k: (".0." not in k, torch.Size(left[k][1]).numel(), k))[:3]:
        with safe_open(str(left[key][0]), "pt") as handle:
            x = handle.get_tensor(key).float()
        with safe_open(str(right[key][0]), "pt") as handle:
            y = handle.get_tensor(key).float()
        if x.shape != y.shape or not torch.allclose(x, y, rtol=1e-2, atol=1e-3):
            return key
    return None


def merge(adapter_path: str, output: str, dtype: str | None = None, base: str | None = None,
          quantize: str | None = None, allow_other_base: bool = False) -> dict:
    """Merge the adapter into its base and save a standalone model (optionally quantized to NF4) to `output`."""
    from transformers import AutoTokenizer, GenerationConfig

    from sft.after_training.generation import adapter_base, load_base, run_recipe_values
    from sft.model import torch_dtype

    target = Path(output)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"-o {output}: already exists and is not empty; choose another folder or remove it")
    folder = adapter_folder(adapter_path)
    recorded = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base_name = adapter_base(folder, base)
    if base and recorded:
        check_same_base(folder, recorded, base_name, allow_other_base)
    trust = bool(run_recipe_values(folder).get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust)
    model = load_base(base_name, torch_dtype(dtype), trust, vocab_size=len(tokenizer))
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(folder))
    except RuntimeError as err:
        raise UserError(f"{folder}: adapter does not fit base {base_name}: "
                        f"{str(err).strip().splitlines()[-1].strip()}") from err
    merged = model.merge_and_unload()
    if (folder / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(str(folder))

    recipe = next((p for p in (folder / "recipe.yaml", folder.parent / "recipe.yaml") if p.is_file()), None)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if quantize:
            full = staging / "full"
            save_model(merged, tokenizer, full)
            del merged, model
            quantized = quantize_4bit(full, dtype, trust)
            save_model(quantized, tokenizer, staging / "out", recipe)
            result = staging / "out"
        else:
            save_model(merged, tokenizer, staging / "out", recipe)
            result = staging / "out"
        if target.exists():
            target.rmdir()  # empty, checked above
        result.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"output": str(target), "adapter": str(folder), "base": base_name, "quantized": quantize or None}


def save_model(model, tokenizer, folder: Path, recipe: Path | None = None) -> None:
    model.save_pretrained(str(folder))  # safetensors, the only format transformers 5 writes
    tokenizer.save_pretrained(str(folder))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(folder))
    if recipe is not None:  # provenance: the resolved recipe that trained the adapter (also feeds the model card)
        shutil.copyfile(recipe, folder / "recipe.yaml")


def quantize_4bit(folder: Path, dtype: str | None, trust: bool):
    """NF4 with double quantization (bitsandbytes), the QLoRA storage format; quantizes on CPU too."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from sft.model import torch_dtype

    compute = torch_dtype(dtype if dtype and dtype != "auto" else "bfloat16")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    return AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=config, dtype=compute,
                                                trust_remote_code=trust, use_safetensors=True)


def push(folder: str, repo: str, private: bool = False) -> str:
    """Publish the merged model the way `sft push` publishes a run (sft.hub: model card from the copied
    recipe.yaml, token never written, one-line errors). Returns its one-line report."""
    from sft.hub.publish import push_run

    return push_run(folder, repo, private=private)
