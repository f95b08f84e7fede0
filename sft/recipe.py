"""Recipe loading: a flat YAML file (plus command-line overrides) becomes TRL's own dataclasses.

Keys are the field names of TRL's `ScriptArguments`, `SFTConfig` (so every `TrainingArguments` field),
`ModelConfig` and `DatasetMixtureConfig`, alignment-handbook's `dataset_mixture` and `chat_template`, and the
few keys of `SftArguments` below. Anything else fails before a model or a dataset is touched.
"""

import dataclasses
import difflib
import enum
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sft.templates.chat import is_inline_jinja
from sft.errors import UserError, read_utf8
from sft.io import write_atomic
from sft.migrate import refuse_foreign_config
from sft.launch.profiles import PROFILES
from sft.recipe_args import as_written_for_text_fields, plain_scalar_texts, typed_overrides
from sft.validate import check_values, one_line
from sft.yaml_checks import describe_yaml_error, refuse_duplicate_keys

METHODS = ("full", "lora", "qlora", "freeze")
LOSS_MODES = ("completion", "assistant", "last_assistant", "all")


@dataclass
class SftArguments:
    """This toolkit's own recipe keys; everything else is TRL's or transformers' own name."""

    method: str | None = field(
        default=None,
        metadata={"help": "full | lora | qlora | freeze. Default: from TRL's use_peft/load_in_4bit, else full.",
                  "choices": list(METHODS)},
    )
    trainable_layers: int | None = field(
        default=None, metadata={"help": "freeze: train only the last N transformer blocks."}
    )
    trainable_modules: list[str] | None = field(
        default=None, metadata={"help": "freeze: also train parameters whose name matches one of these regexes."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "A built-in template name, inline Jinja, or a path to a .jinja file (alignment-handbook)."},
    )
    dataset_mixture: dict | None = field(
        default=None, metadata={"help": "alignment-handbook mixture: {datasets: [{id, config, split, columns, "
                                        "weight}], test_split_size, seed}."}
    )
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "Force a format instead of detecting it: chat, sharegpt, instruction, "
                          "prompt_completion, text."},
    )
    column_mapping: dict | None = field(
        default=None, metadata={"help": "Rename source columns to the format's names, e.g. {question: prompt}."}
    )
    loss_mode: str | None = field(
        default=None,
        metadata={"help": "completion | assistant | last_assistant | all. Default: assistant for chat data, "
                          "completion for instruction and prompt/completion data, all for text.",
                  "choices": list(LOSS_MODES)},
    )
    instruction_template: str = field(
        default="chat",
        metadata={"help": "How instruction data is rendered: 'chat' (a user and an assistant turn through the "
                          "chat template) or 'alpaca' (the Alpaca prompt).", "choices": ["chat", "alpaca"]},
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip (and count) rows that fail validation."})
    max_dropped_fraction: float = field(
        default=0.5,
        metadata={"help": "Fail when more than this share of examples lose all trained tokens to max_length."},
    )
    mask_fallback: str = field(
        default="context",
        metadata={"help": "How assistant turns share examples when the chat template renders earlier turns "
                          "differently from how the model generated them (e.g. drops their reasoning): 'context' "
                          "(each turn trained in the context the model sees: one example per turn where needed, "
                          "else one per conversation), 'last_assistant' (train only the last assistant turn), "
                          "'split_turns' (always one example per assistant turn) or 'error' (stop, naming the "
                          "example).",
                  "choices": ["context", "last_assistant", "split_turns", "error"]},
    )
    chat_template_kwargs: dict | None = field(
        default=None,
        metadata={"help": "Extra variables for the chat template, e.g. {enable_thinking: false}; a row's own "
                          "chat_template_kwargs override them for that row."},
    )
    data_cache: bool = field(
        default=True,
        metadata={"help": "Reuse the tokenized data of an earlier run or `sft check` with the same data, tokenizer, "
                          "template and settings (kept under $SFT_CACHE_DIR, default the datasets cache)."},
    )
    resume: bool = field(
        default=True, metadata={"help": "Resume from the newest complete checkpoint in output_dir, if any."}
    )
    env: dict | None = field(default=None, metadata={"help": "Environment variables to set before the run."})
    global_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per optimizer step over all processes; sft sets "
                                        "gradient_accumulation_steps from it and the number of processes "
                                        "(fails when they do not divide it)."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement of "
                                        "metric_for_best_model (default eval_loss); needs eval_strategy."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Early stopping: the least change of the metric that counts as improvement."}
    )
    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "User messages answered with the training template every "
                                        "sample_every_n_steps (default: the first sample_count eval examples)."}
    )
    sample_every_n_steps: int | None = field(
        default=None, metadata={"help": "Write generation samples to output_dir/samples.jsonl and the trackers "
                                        "every N steps."}
    )
    sample_count: int = field(default=3, metadata={"help": "Eval examples to sample from when no sample_prompts."})
    sample_max_new_tokens: int = field(default=64, metadata={"help": "Longest generation sample, in tokens."})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "TRL's CLI key: `sft train` runs under `sft launch` with this profile of "
                                        "accelerate_configs/ (auto: the planner's choice).",
                                "choices": ["auto", *PROFILES]}
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "TRL's CLI key: processes to start; over 1, `sft train` runs under "
                                        "`sft launch` (default profile: auto)."}
    )
    provenance: dict | None = field(
        default=None, metadata={"help": "Written by sft into output_dir/recipe.yaml; ignored when read."}
    )


# Old names found in published recipes and guides -> today's name. Values are converted where the meaning moved.
RENAMED_KEYS = {
    "max_seq_length": "max_length",
    "torch_dtype": "dtype",
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float warmup_steps in [0, 1) is a ratio
    "use_flash_attention_2": "attn_implementation",
    "overwrite_output_dir": "resume",
    "preprocessing_num_workers": "dataset_num_proc",  # alignment-handbook before v0.4
}
RENAMED_VALUES = {
    "use_flash_attention_2": lambda v: "flash_attention_2" if v else None,
    "overwrite_output_dir": lambda v: not v,
}
# Keys whose string values are paths; a relative path is looked up from the working directory, then from the
# recipe's own folder (so a recipe and its data can travel together).
PATH_KEYS = ("model_name_or_path", "dataset_name", "chat_template_path", "chat_template")
# Where sft's default differs from TRL's, and why.
SFT_DEFAULTS = {
    "include_num_input_tokens_seen": "non_padding",  # the final summary reports tokens seen
}


@dataclass
class Recipe:
    """A validated recipe: TRL's dataclasses plus ours, and where it came from."""

    script: Any  # trl.ScriptArguments
    training: Any  # trl.SFTConfig
    model: Any  # trl.ModelConfig
    mixture: Any  # trl.DatasetMixtureConfig
    sft: SftArguments
    source: str  # the path or address the user gave
    base_dir: Path  # folder that relative data paths resolve against
    explicit: dict = field(default_factory=dict)  # keys set by the recipe or the command line, as resolved
    notes: list = field(default_factory=list)  # one-line messages for the user (renames, hardware choices)


def recipe_dataclasses():
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig

    return {"script": ScriptArguments, "training": SFTConfig, "model": ModelConfig, "mixture": DatasetMixtureConfig,
            "sft": SftArguments}


def known_fields() -> dict[str, list[tuple[str, dataclasses.Field, Any]]]:
    """key -> [(section, field, type)] for every init field of every recipe dataclass."""
    table = {}
    for section, cls in recipe_dataclasses().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                table.setdefault(f.name, []).append((section, f, hints.get(f.name, Any)))
    return table


# ---------------------------------------------------------------------------------------------------------------
# Reading the file


@dataclass
class RecipeFile:
    """Where a recipe's text came from. A Hub address resolves to a downloaded local file (see sft/hub.py)."""

    path: Path | None  # local file to read; None for a recipe given on the command line alone
    display: str  # what the user typed, for messages
    base_dir: Path  # relative data paths resolve here


def locate(address: str) -> RecipeFile:
    if address.startswith("hf://"):
        from sft.hub import download_recipe  # added by the Hub issue; local recipes never import it

        return download_recipe(address)
    path = Path(address)
    if not path.is_file():
        raise UserError(f"{address}: recipe file not found" + (" (it is a folder)" if path.is_dir() else ""))
    return RecipeFile(path=path, display=address, base_dir=path.resolve().parent)


def read_yaml_with_lines(recipe_file: RecipeFile) -> tuple[dict, dict[str, int]]:
    """The recipe mapping and the line number of each top-level key."""
    text = read_utf8(recipe_file.path, recipe_file.display)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{recipe_file.display}{describe_yaml_error(err)}") from err
    refuse_duplicate_keys(node, recipe_file.display)
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise UserError(
            f"{recipe_file.display}: a recipe must be a mapping of keys to values (key: value lines), "
            f"not a {type(data).__name__}"
        )
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return data, lines


# ---------------------------------------------------------------------------------------------------------------
# Checking keys and types


def closest(key: str, candidates, otherwise: str = "; see `sft train --help` for where keys come from") -> str:
    """'; did you mean X?' for a mistyped key, else `otherwise`."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else otherwise


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Mismatch(Exception):
    pass


def coerce(value, tp):
    """Check and convert one value to a dataclass field type; raise _Mismatch when it cannot be."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
        if enums and isinstance(value, str):  # `IntervalStrategy | str`: TrainingArguments takes only the enum's values
            return coerce(value, enums[0])
        # Prefer an exact kind match (e.g. keep 0.03 a float for `float | int`).
        for member in sorted(members, key=lambda m: not isinstance(value, m if isinstance(m, type) else ())):
            if member is type(None):
                continue
            try:
                return coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_type_name(m) for m in members if m is not type(None)))
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch("one of " + ", ".join(map(repr, typing.get_args(tp))))
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is None:
            raise _Mismatch("a list")
        return [coerce(v, item_tp) for v in items]
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                pass
        raise _Mismatch("a mapping")
    if dataclasses.is_dataclass(tp):  # e.g. TRL's DatasetConfig entries of `datasets:`
        if isinstance(value, tp):
            return value
        from sft.data.sources import extended_entry_type

        tp = extended_entry_type(tp)  # DatasetConfig gains sft's per-source keys (format, column_mapping)
        if not isinstance(value, dict):
            raise _Mismatch(f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}")
        hints, names = typing.get_type_hints(tp), {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise _Mismatch(f"a mapping with keys {', '.join(sorted(names))} (unknown: {', '.join(unknown)})")
        return tp(**{k: coerce(v, hints[k]) for k, v in value.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if isinstance(value, tp):
            return value
        if value in choices:
            return value
        raise _Mismatch("one of " + ", ".join(map(str, choices)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch("a string")
    if isinstance(value, tp if isinstance(tp, type) else object):
        return value
    raise _Mismatch(_type_name(tp))


def check_keys(values: dict, where: typing.Callable[[str], str], notes: list, option_style: bool = False) -> dict:
    """Rename old keys (one note each), reject unknown keys and coerce types. `where(key)` locates a key."""
    table = known_fields()
    checked = {}
    for key, value in values.items():
        shown = f"--{key}" if option_style else f"'{key}'"
        if key in RENAMED_KEYS:
            new = RENAMED_KEYS[key]
            value = RENAMED_VALUES.get(key, lambda v: v)(value)
            notes.append(f"{where(key)}: '{key}' is now '{new}'; read as {new}: {value!r}")
            key = new
        if key == "packing_strategy" and value == "ffd":
            notes.append(f"{where(key)}: packing_strategy 'ffd' is now 'bfd'; using bfd")
            value = "bfd"
        if key not in table:
            raise UserError(f"{where(key)}: unknown key {shown}{closest(key, table)}")
        section, f, tp = table[key][0]
        try:
            value = coerce(value, tp)
        except _Mismatch as err:
            raise UserError(f"{where(key)}: {shown} must be {err}, got {value!r}") from None
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise UserError(f"{where(key)}: {shown} must be one of {', '.join(map(str, choices))}; got {value!r}")
        checked[key] = value
    return checked


# ---------------------------------------------------------------------------------------------------------------
# Building the dataclasses


def resolve_path(value: str, base_dir: Path) -> str:
    """A relative path that exists under the working directory stays; else one under the recipe's folder wins."""
    # Inline Jinja (alignment-handbook's chat_template) is decided before any filesystem call: a template longer
    # than a file name may be makes os.stat raise "File name too long".
    if not isinstance(value, str) or not value or is_inline_jinja(value):
        return value
    try:
        if Path(value).is_absolute() or Path(value).exists():
            return value
        candidate = base_dir / value
        if candidate.exists() or any(base_dir.glob(value)):
            return str(candidate)
    except (ValueError, OSError):  # not a valid path or pattern: leave the value to its consumer
        pass
    return value


def field_type(key: str):
    """The type of the field a recipe key (or its old name) sets; None for a key no field has."""
    fields = known_fields().get(RENAMED_KEYS.get(key, key))
    return fields[0][2] if fields else None


def load_recipe(address: str | None, overrides: list[str] | tuple[str, ...] = (),
                adapt_to_hardware: bool = True) -> Recipe:
    """Read, check and build a recipe (None: every key from the command line, as `trl sft --model_name_or_path M
    ...`). Nothing is loaded or written besides the recipe file itself."""
    if address is None:
        recipe_file, data, lines = RecipeFile(path=None, display="command line", base_dir=Path.cwd()), {}, {}
    else:
        recipe_file = locate(address)
        data, lines = read_yaml_with_lines(recipe_file)
        refuse_foreign_config(data, recipe_file.display)  # an axolotl or LLaMA-Factory file: point to `sft migrate`
        data = as_written_for_text_fields(data, plain_scalar_texts(recipe_file.path.read_text()), field_type)
    notes: list[str] = []
    values = check_keys(data, lambda k: f"{recipe_file.display}:{lines.get(k, 1)}", notes)
    typed = typed_overrides(overrides, field_type, untyped_keys=RENAMED_VALUES)
    from_command_line = check_keys(typed, lambda k: "command line", notes, option_style=True)
    values.update(from_command_line)
    values.pop("provenance", None)

    for key in PATH_KEYS:
        if key in values:
            values[key] = resolve_path(values[key], recipe_file.base_dir)
    if values.get("env"):
        os.environ.update({str(k): str(v) for k, v in values["env"].items()})

    explicit = dict(values)
    for key, value in SFT_DEFAULTS.items():
        values.setdefault(key, value)
    if adapt_to_hardware:
        from sft.train.hardware import adapt_training_values

        from sft.capabilities import honour_requests

        notes += adapt_training_values(values)
        notes += honour_requests(values)  # flash attention, Liger, trackers: fall back on CPU, stop on GPU
    apply_method(values, notes)

    sections: dict[str, dict] = {name: {} for name in recipe_dataclasses()}
    table = known_fields()
    for key, value in values.items():
        for section, _, _ in table[key]:
            sections[section][key] = value
    built = {}
    for section, cls in recipe_dataclasses().items():
        try:
            built[section] = cls(**sections[section])
        except (ValueError, TypeError) as err:
            message = one_line(str(err)) or type(err).__name__
            raise UserError(f"{recipe_file.display}: invalid settings: {message}") from err
    if built["model"].model_name_or_path is None:
        raise UserError(f"{recipe_file.display}: missing key 'model_name_or_path' (a local model folder or a Hub "
                        "name)")
    recipe = Recipe(**built, source=recipe_file.display, base_dir=recipe_file.base_dir, explicit=explicit, notes=notes)
    check_values(recipe, lambda k: "command line" if k in from_command_line
                 else f"{recipe_file.display}:{lines[k]}" if k in lines else recipe_file.display, from_command_line)
    return recipe


def apply_method(values: dict, notes: list) -> None:
    """`method` and TRL's own switches (use_peft, load_in_4bit, load_in_8bit) describe the same thing."""
    method = values.get("method")
    if method is None:
        method = "qlora" if values.get("load_in_4bit") else "lora" if values.get("use_peft") else "full"
        values["method"] = method
    if method in ("lora", "qlora"):
        values["use_peft"] = True
    if method == "qlora":
        if values.get("load_in_8bit"):
            raise UserError("method qlora uses a 4-bit base; remove load_in_8bit (or use method: lora with "
                            "load_in_8bit: true)")
        values["load_in_4bit"] = True
        values.setdefault("bnb_4bit_quant_type", "nf4")
        values.setdefault("use_bnb_nested_quant", True)  # double quantization
    if method in ("full", "freeze") and (values.get("use_peft") or values.get("load_in_4bit")
                                         or values.get("load_in_8bit")):
        raise UserError(f"method {method} trains the base weights; remove use_peft/load_in_4bit/load_in_8bit or "
                        "use method: lora or qlora")
    if method == "freeze" and not values.get("trainable_layers") and not values.get("trainable_modules"):
        raise UserError("method freeze needs trainable_layers (the last N blocks) and/or trainable_modules "
                        "(name patterns)")
    if values.get("use_peft") and not values.get("lora_target_modules"):
        values["lora_target_modules"] = ["all-linear"]


# ---------------------------------------------------------------------------------------------------------------
# Writing the resolved recipe

SECRET_KEYS = ("hub_token", "push_to_hub_token")


def resolved_values(recipe: Recipe) -> dict:
    """Every effective value, flat, as a recipe. Values chosen for this machine's hardware are the recipe's own, or
    left out where it set none, so the file asks for the same run on other hardware too."""
    from sft.train.hardware import HARDWARE_KEYS

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
            out[f.name] = _plain(getattr(obj, f.name))
    if out.get("env"):  # a token set through `env:` (HF_TOKEN, WANDB_API_KEY, ...) is never written either
        from sft.hub import redact

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
    text += yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=120)
    write_atomic(path, text)
