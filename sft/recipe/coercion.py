"""Checking a recipe's keys and types: old names read as today's, unknown keys refused with the closest known one,
and each value converted to the type of the dataclass field it sets (or refused, naming where it was set)."""

import dataclasses
import difflib
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

from sft.errors import UserError
from sft.recipe.fields import RENAMED_KEYS, RENAMED_VALUES, extended_entry_type, known_fields, value_range
from sft.templates.chat import is_inline_jinja


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
        kinds = [m if isinstance(m, type) and m is not Any else () for m in members]  # Any takes no isinstance
        for _, member in sorted(zip(kinds, members), key=lambda pair: not isinstance(value, pair[0])):
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


def check_keys(values: dict, where: typing.Callable[[str], str], notes: list, option_style: bool = False,
               table: dict | None = None) -> dict:
    """Rename old keys (one note each), reject unknown keys, coerce types and check ranges. `where(key)` locates a
    key; `table` is a known_fields() table (default: from the imported dataclasses)."""
    table = known_fields() if table is None else table
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
        allowed = value_range(key, f)
        if allowed and not allowed.allows(value):
            raise UserError(f"{where(key)}: {key} must be {allowed.describe(isinstance(value, int))}, got {value!r}")
        checked[key] = value
    return checked


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
