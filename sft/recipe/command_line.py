"""A recipe's command line, read as TRL's `HfArgumentParser` reads it.

- `RECIPE [--key value ...]`, TRL's `--config RECIPE [--key value ...]`, or the keys alone as flags.
- Each value is typed by the field it sets: `--eval_strategy no` is the string "no" (a str/enum field), `--bf16 no`
  the boolean False, `--lora_target_modules q_proj v_proj` a list. YAML would read `no` as False for every field.
- The same for a recipe file: `save_strategy: no` (YAML 1.1 reads false) is the text as written where the field
  takes a string, not a boolean.

Pure functions of the arguments and of a `field_type(key)` lookup, so this module imports nothing heavy.
"""

import enum
import types
import typing

import yaml

from sft.errors import UserError

# HfArgumentParser's string_to_bool words, plus YAML's on/off.
BOOL_WORDS = {"true": True, "yes": True, "y": True, "t": True, "on": True, "1": True,
              "false": False, "no": False, "n": False, "f": False, "off": False, "0": False}


def split_command_line(args) -> tuple[str | None, list[str]]:
    """(recipe address or None, override arguments) from `RECIPE ...`, `--config RECIPE ...` or flags alone."""
    args = list(args)
    address = None
    if args and not args[0].startswith("-"):
        address, args = args[0], args[1:]
    rest, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            if not value or value.startswith("--"):
                raise UserError("--config needs a recipe file, as in --config recipe.yaml")
            if address is not None:
                raise UserError(f"two recipes given ({address} and --config {value}); give one")
            address, i = value, i + (1 if "=" in arg else 2)
            continue
        rest.append(arg)
        i += 1
    return address, rest


def read_options(args) -> dict[str, list[str]]:
    """`--key v`, `--key=v`, `--key v1 v2` (a list) and a bare `--flag` -> {key: [raw values]}; nothing typed yet."""
    options: dict[str, list[str]] = {}
    key = None
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            options[name.replace("-", "_")] = [value] if eq else []
            key = None if eq else name.replace("-", "_")  # `--key=value` takes exactly that one value
        elif key is not None:
            options[key].append(arg)
        else:
            raise UserError(f"command line: expected an option like --learning_rate 1e-4, got {arg!r}")
    return options


def _members(tp) -> list:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return list(typing.get_args(tp))
    return [tp]


def _takes_text(tp) -> bool:
    if tp is str:
        return True
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return True
    return typing.get_origin(tp) is typing.Literal and all(isinstance(v, str) for v in typing.get_args(tp))


def _takes(tp, kind) -> bool:
    return tp is kind or typing.get_origin(tp) is kind


def _yaml_value(text: str):
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def typed_value(key: str, values: list[str], tp) -> typing.Any:
    """One option's raw values as the field of type `tp` takes them (None: a key no field has; read as YAML)."""
    members = _members(tp) if tp is not None else []
    shown = f"--{key}"
    if not values:
        if tp is None or bool in members:
            return True
        raise UserError(f"command line: {shown} needs a value, as in {shown} VALUE")
    if len(values) > 1:
        if any(_takes(m, list) or _takes(m, tuple) for m in members) or tp is None:
            return list(values)
        raise UserError(f"command line: {shown} takes one value, got {len(values)}: {' '.join(values)}")
    text = values[0]
    if tp is None:
        return _yaml_value(text)
    if bool in members and text.lower() in BOOL_WORDS:
        return BOOL_WORDS[text.lower()]
    if text in ("None", "null") and type(None) in members:
        return None
    stripped = text.strip()
    structured = (stripped.startswith("[") and any(_takes(m, list) or _takes(m, tuple) for m in members)) or \
                 (stripped.startswith("{") and any(m is dict or _takes(m, dict) for m in members))
    if structured:
        return _yaml_value(text)
    if any(_takes_text(m) for m in members):
        return text  # a string field keeps exactly what was typed: `no`, `1e-4`, `{% for ... %}`
    return _yaml_value(text)


def typed_overrides(args, field_type: typing.Callable[[str], typing.Any], untyped_keys=()) -> dict[str, typing.Any]:
    """Override arguments -> {key: value typed by its field}. `untyped_keys` (old names whose meaning moved) are read
    as YAML, as in a recipe file."""
    return {key: typed_value(key, values, None if key in untyped_keys else field_type(key))
            for key, values in read_options(args).items()}


# ---------------------------------------------------------------------------------------------------------------
# Recipe files: YAML 1.1 booleans given to a string field

def plain_scalar_texts(text: str) -> dict[str, str]:
    """Top-level key -> its value exactly as written, for values that are plain (unquoted) scalars."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v.value for k, v in node.value
            if isinstance(v, yaml.ScalarNode) and v.style is None}


def as_written_for_text_fields(data: dict, texts: dict[str, str], field_type) -> dict:
    """`save_strategy: no` reads as False in YAML 1.1; a field that takes text and no boolean gets "no" back."""
    fixed = dict(data)
    for key, value in data.items():
        if isinstance(value, bool) and key in texts:
            tp = field_type(key)
            members = _members(tp) if tp is not None else []
            if bool not in members and any(_takes_text(m) for m in members):
                fixed[key] = texts[key]
    return fixed
