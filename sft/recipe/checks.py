"""Values the libraries would reject only once training starts (after output_dir was written), checked while the
recipe is read: so a bad value fails as one line naming its key, and a previous run in output_dir stays as it was.

TrainingArguments accepts a negative learning rate or a batch size of 0 and leaves torch, the DataLoader or the
optimizer to fail mid-run; PEFT's LoraConfig rejects its own values, but only when the trainer builds it. Ranges
of single values are checked as each key is read (sft/recipe/fields.py declares them); here come the checks that
need the built recipe: LoraConfig built right away, keys of one method set under another, and output_dir.
"""
import dataclasses
import os
import re
from pathlib import Path

from sft.errors import UserError

# Step intervals matter only when their strategy is "steps"; 0 would save, log or evaluate never (or at every
# step, depending on the library version) without saying so.
STEP_INTERVALS = {"save_steps": "save_strategy", "logging_steps": "logging_strategy", "eval_steps": "eval_strategy"}
# ModelConfig's LoRA keys: they do nothing unless a PEFT method is on.
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
             "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora")
FREEZE_KEYS = ("trainable_layers", "trainable_modules")


def one_line(message: str) -> str:
    """A library's multi-line error message as one line: transformers lists details as "- item" lines after
    "... but found", and names strategies as enum members (IntervalStrategy.NO is the recipe's `no`)."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return ""
    head, items = lines[0], [line.lstrip("-").strip() for line in lines[1:]]
    text = head + (("" if head.endswith(":") else ":") + " " + "; ".join(items) if items else "")
    return re.sub(r"\b[A-Z]\w*Strategy\.(\w+)", lambda m: m.group(1).lower(), text)


def check_values(recipe, where, command_line_keys=()) -> None:
    """Refuse values that would fail (or silently misbehave) only after training started. `where(key)` says
    where a key was set ("recipe.yaml:7" or "command line")."""
    training, model = recipe.training, recipe.model
    for key, strategy_key in STEP_INTERVALS.items():
        strategy = getattr(getattr(training, strategy_key), "value", getattr(training, strategy_key))
        value = getattr(training, key)
        if strategy == "steps" and value is not None and value <= 0:
            raise UserError(f"{where(key)}: {key} must be greater than 0 with {strategy_key} steps, got {value:g}; "
                            f"to turn it off set {strategy_key}: \"no\"")
    if recipe.explicit.get("bf16") and recipe.explicit.get("fp16"):
        raise UserError(f"{where('fp16')}: bf16 and fp16 are both true; choose one (bf16 where the GPU supports "
                        "it)")
    # `--method full` on the command line over a LoRA recipe leaves the recipe's lora_* keys unused on purpose.
    method_switched = {"method", "use_peft", "load_in_4bit"} & set(command_line_keys)
    if model.use_peft:
        check_lora_config(recipe, where)
    if not method_switched:
        refuse_unused(recipe, where, LORA_KEYS, model, model.use_peft, "trains no LoRA adapter",
                      "set method: lora (or qlora)")
        refuse_unused(recipe, where, FREEZE_KEYS, recipe.sft, recipe.sft.method == "freeze",
                      "trains every weight of the model" if recipe.sft.method == "full" else "trains an adapter",
                      "set method: freeze")
    for pattern in recipe.sft.trainable_modules or []:
        try:
            re.compile(pattern)
        except re.error as err:
            raise UserError(f"{where('trainable_modules')}: trainable_modules {pattern!r} is not a valid regular "
                            f"expression ({err}); escape special characters with a backslash") from None
    check_output_dir(recipe, where)


def refuse_unused(recipe, where, keys, section, used: bool, what_method_does: str, fix: str) -> None:
    """Keys of one method set under another: they would do nothing, silently. A value equal to the field's
    default is let through (the resolved recipe of a run lists every key)."""
    if used:
        return
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(section)}
    stray = [k for k in keys if k in recipe.explicit and recipe.explicit[k] != defaults.get(k)]
    if stray:
        raise UserError(f"{where(stray[0])}: {', '.join(stray)} set but method is {recipe.sft.method}, which "
                        f"{what_method_does}; {fix}, or remove {'it' if len(stray) == 1 else 'them'}")


def check_lora_config(recipe, where) -> None:
    """Build PEFT's LoraConfig now, as the trainer will, so its own refusals come before anything is written."""
    from trl import get_peft_config

    try:
        get_peft_config(recipe.model)
    except (ValueError, TypeError) as err:
        message = one_line(str(err))
        key = next((k for k in LORA_KEYS if k.removeprefix("lora_") in message), "method")
        raise UserError(f"{where(key)}: LoRA settings rejected by PEFT: {message}") from err


def check_output_dir(recipe, where) -> None:
    """output_dir must be a folder (or creatable as one) that holds neither the base model nor lies inside it."""
    output_dir = Path(recipe.training.output_dir).expanduser()
    existing = next((p for p in (output_dir, *output_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{where('output_dir')}: output_dir {output_dir}: {existing} is a file, not a folder; "
                        "choose another output_dir")
    if existing is not None and _read_only(existing):
        # (Permissions are not judged here: `sft slurm` and `sft check` read recipes meant for other machines.)
        raise UserError(f"{where('output_dir')}: output_dir {output_dir}: {existing} is on a read-only file system; "
                        "choose another output_dir")
    model = Path(recipe.model.model_name_or_path).expanduser()
    if not model.is_dir():
        return  # a Hub name: its files live in the cache, out of output_dir's way
    out, base = output_dir.resolve(), model.resolve()
    if out == base or base in out.parents or out in base.parents:
        relation = ("is" if out == base else "is inside" if base in out.parents else "contains")
        raise UserError(f"{where('output_dir')}: output_dir {output_dir} {relation} the base model's folder "
                        f"{model}: training would overwrite or mix with its weights; choose a separate output_dir")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_lora_targets(model, recipe) -> None:
    """Every entry of lora_target_modules must name a module of the model (PEFT fails only when none matches, with
    a traceback, and ignores a mistyped one among several)."""
    targets = recipe.model.lora_target_modules
    if isinstance(targets, str):  # TRL turns a one-item list into its item; PEFT reads a string as a regex
        targets = [targets]
    if not recipe.model.use_peft or not targets or targets == ["all-linear"]:
        return
    names = [name for name, _ in model.named_modules() if name]

    def matches(target, name):
        if name == target or name.endswith("." + target):
            return True
        try:
            return re.fullmatch(target, name) is not None
        except re.error:
            return False

    missing = [t for t in targets if not any(matches(t, n) for n in names)]
    if missing:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"{recipe.source}: lora_target_modules {', '.join(missing)} "
                        f"match{'es' if len(missing) == 1 else ''} no module of {recipe.model.model_name_or_path}; "
                        f"its linear modules are {', '.join(linear)} (or use all-linear)")
