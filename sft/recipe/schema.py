"""The recipe keys, their types and defaults, read from the installed TRL's and transformers' source with `ast`
instead of importing them (importing TRL takes seconds: a typo or a bad number is reported before that).

Only the files the recipe dataclasses live in are named here (CLASS_FILES); their fields, types and defaults come
from the installed version's source, base classes included, and are cached on disk keyed by the packages'
versions. When a file is not where it is expected (another version moved it), `fast_fields()` returns None and the
recipe is checked after the import, as before. Types the source names but this module cannot evaluate without
importing (enums, torch types) take any value here: the dataclasses built after the import check those.
"""

import ast
import dataclasses
import json
import os
import typing
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, Optional, Union

# recipe section -> (distribution, file in it, class); sections in the order sft.recipe.fields builds them.
CLASS_FILES = {
    "script": ("trl", "scripts/utils.py", "ScriptArguments"),
    "training": ("trl", "trainer/sft_config.py", "SFTConfig"),
    "model": ("trl", "trainer/model_config.py", "ModelConfig"),
    "mixture": ("trl", "scripts/utils.py", "DatasetMixtureConfig"),
}
# Base classes imported from another package's top level (its lazy __init__ does not say where they live).
BASE_FILES = {"TrainingArguments": ("transformers", "training_args.py")}
CACHE_FORMAT = 2  # raised when what is cached changes
FACTORIES = {"list": list, "dict": dict}
NAMES = {"Any": Any, "Optional": Optional, "Union": Union, "Literal": Literal, "List": list, "Dict": dict,
         "Tuple": tuple, "list": list, "dict": dict, "tuple": tuple, "int": int, "float": float, "str": str,
         "bool": bool, "None": None}


@dataclasses.dataclass(frozen=True)
class SourceField:
    """What check_keys and `--help-all` read of a dataclass field."""

    name: str
    metadata: dict
    default: Any = dataclasses.MISSING
    default_factory: Any = dataclasses.MISSING


class _Opaque(type):
    """A type the source names but that cannot be had without importing it (an enum, torch.dtype): it keeps its
    name for `--help-all` and takes any value (the dataclasses built after the import check it)."""

    def __instancecheck__(cls, instance):
        return True


def fast_fields() -> dict | None:
    """key -> [(section, field, type)] as sft.recipe.fields.known_fields() gives them, without importing TRL;
    None where the installed packages are laid out otherwise than expected."""
    raw = _raw_fields()
    if raw is None:
        return None
    from sft.recipe.fields import SftArguments

    table = {}
    for section in CLASS_FILES:
        for name, about in raw[section].items():
            factory = FACTORIES.get(about.get("factory"), dataclasses.MISSING)
            f = SourceField(name, {"help": about["help"]} if "help" in about else {},
                            about.get("default", dataclasses.MISSING), factory)
            table.setdefault(name, []).append((section, f, annotation_type(about["type"])))
    hints = typing.get_type_hints(SftArguments)
    for f in dataclasses.fields(SftArguments):
        table.setdefault(f.name, []).append(("sft", f, hints[f.name]))
    return table


def training_arguments_names() -> set | None:
    """The fields transformers' TrainingArguments declares (TRL's SFTConfig adds its own to them)."""
    raw = _raw_fields()
    return set(raw["TrainingArguments"]) if raw is not None else None


@lru_cache(maxsize=None)
def _raw_fields() -> dict | None:
    """section -> {field name: annotation source}, from the disk cache or the source."""
    try:
        versions = "-".join(f"{d}{version(d)}" for d in ("trl", "transformers"))
    except PackageNotFoundError:
        return None
    cache = Path(os.environ.get("SFT_CACHE_DIR") or Path.home() / ".cache" / "sft") / f"recipe-keys-{versions}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("format") == CACHE_FORMAT:
            return cached
    except (OSError, ValueError, AttributeError):
        pass  # none yet, or unreadable: read the source again
    raw = {"format": CACHE_FORMAT}
    wanted = {**CLASS_FILES, "TrainingArguments": (*BASE_FILES["TrainingArguments"], "TrainingArguments")}
    for section, (dist, path, cls) in wanted.items():
        fields = _class_fields(dist, path, cls)
        if fields is None:
            return None
        raw[section] = fields
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(cache)  # whole or not at all: another process may read it now
    except OSError:
        pass  # a read-only home: parse again next time
    return raw


def _class_fields(dist: str, path: str, cls: str) -> dict | None:
    """{name: {type: annotation source, default, factory, help}} of a dataclass's init fields, its base classes'
    first (as dataclasses orders them)."""
    spec = find_spec(dist)  # a top-level package: found without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / path
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        return None
    fields = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id != "object":
            where = _base_file(tree, base.id, dist, path)
            inherited = _class_fields(*where, base.id) if where else None
            if inherited is None:
                return None
            fields.update(inherited)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and _is_init_field(item):
            fields[item.target.id] = {"type": ast.unparse(item.annotation), **_default_and_help(item.value)}
    return {k: v for k, v in fields.items() if not k.startswith("_")}


def _is_init_field(item: ast.AnnAssign) -> bool:
    if "ClassVar" in ast.unparse(item.annotation):
        return False
    call = item.value
    return not (isinstance(call, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                                   and k.value.value is False for k in call.keywords))


def _default_and_help(value: ast.expr | None) -> dict:
    """The literal parts of `= field(default=..., default_factory=list, metadata={"help": ...})` (or `= 3`)."""
    if value is None:
        return {}
    if not (isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field"):
        return _literal("default", value)
    found = {}
    for keyword in value.keywords:
        if keyword.arg == "default":
            found.update(_literal("default", keyword.value))
        elif keyword.arg == "default_factory" and getattr(keyword.value, "id", None) in FACTORIES:
            found["factory"] = keyword.value.id
        elif keyword.arg == "metadata" and isinstance(keyword.value, ast.Dict):
            for k, v in zip(keyword.value.keys, keyword.value.values):
                if isinstance(k, ast.Constant) and k.value == "help":
                    found.update(_literal("help", v))
    return found


def _literal(name: str, node: ast.expr) -> dict:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {}  # computed: not shown
    return {name: value} if isinstance(value, (str, int, float, bool, type(None))) else {}


def _base_file(tree: ast.Module, name: str, dist: str, path: str) -> tuple[str, str] | None:
    """Where a base class named in `path` is defined: a relative import in the same package, or BASE_FILES."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name and a.asname is None for a in node.names):
            if node.level:
                folder = Path(path).parents[node.level - 1]
                return dist, str(folder / (node.module or "").replace(".", "/")) + ".py"
            return BASE_FILES.get(name)
        if isinstance(node, ast.ClassDef) and node.name == name:
            return dist, path
    return None


def annotation_type(source: str):
    """An annotation's source as a type; names this module cannot evaluate without an import are _Opaque types of
    the same name."""
    opaque = {}

    class Named(ast.NodeTransformer):
        def visit_Subscript(self, node):
            if isinstance(node.value, ast.Name) and node.value.id == "Literal":
                return node  # its strings are the values
            return self.generic_visit(node)

        def visit_Attribute(self, node):  # torch.dtype -> dtype
            return self.visit_Name(ast.copy_location(ast.Name(node.attr, ast.Load()), node))

        def visit_Name(self, node):
            if node.id not in NAMES:
                opaque.setdefault(node.id, _Opaque(node.id, (), {}))
            return node

        def visit_Constant(self, node):  # a quoted forward reference
            if isinstance(node.value, str):
                return self.visit_Name(ast.copy_location(ast.Name(node.value.rsplit(".", 1)[-1], ast.Load()), node))
            return node

    tree = ast.fix_missing_locations(Named().visit(ast.parse(source, mode="eval")))
    try:
        return eval(compile(tree, "<annotation>", "eval"), {"__builtins__": {}}, {**NAMES, **opaque})  # noqa: S307
    except Exception:  # an annotation form this reading does not know: anything passes here, the import checks it
        return Any
