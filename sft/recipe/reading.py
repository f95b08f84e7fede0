"""Reading a recipe file: where it is (a path, or an hf:// address resolved through the Hub cache), its YAML with
the line of each key, and what PyYAML lets through or reports unhelpfully: a key given twice (PyYAML keeps the
later value silently, so a typo'd second `learning_rate: 5.0` would train at 5.0), and an unclosed bracket or
quote (PyYAML names the line where it gave up, after the broken one)."""

from dataclasses import dataclass
from pathlib import Path

import yaml

from sft.errors import UserError, read_utf8


@dataclass
class RecipeFile:
    """Where a recipe's text came from. A Hub address resolves to a downloaded local file."""

    path: Path | None  # local file to read; None for a recipe given on the command line alone
    display: str  # what the user typed, for messages
    base_dir: Path  # relative data paths resolve here


def locate(address: str) -> RecipeFile:
    if address.startswith("hf://"):
        # sft.hub.addresses depends on nothing of sft but errors; local recipes never import the Hub client.
        from sft.hub.addresses import download_recipe

        local, base_dir = download_recipe(address)
        return RecipeFile(path=local, display=address, base_dir=base_dir)
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


# PyYAML contexts that open on the broken line and fail further down.
UNCLOSED = {
    "while parsing a flow sequence": "a '[' list",
    "while parsing a flow mapping": "a '{' mapping",
    "while scanning a quoted scalar": "a quoted string",
}


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """':LINE: not valid YAML: ...' naming the line that is broken."""
    problem_mark, context_mark = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    if context in UNCLOSED and context_mark is not None:
        found = f" ({problem} on line {problem_mark.line + 1})" if problem_mark is not None else ""
        return f":{context_mark.line + 1}: not valid YAML: {UNCLOSED[context]} opens here and is not closed{found}"
    where = f":{problem_mark.line + 1}" if problem_mark is not None else ""
    return f"{where}: not valid YAML: {problem}"


def refuse_duplicate_keys(node, shown: str) -> None:
    """Fail on the first mapping (at any depth) that has a key twice, naming both lines."""
    if isinstance(node, yaml.MappingNode):
        first_line = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in first_line:
                raise UserError(f"{shown}:{line}: key '{key}' is given twice (lines {first_line[key]} and {line}); "
                                "keep one")
            if key is not None:
                first_line[key] = line
            refuse_duplicate_keys(value_node, shown)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            refuse_duplicate_keys(item, shown)
