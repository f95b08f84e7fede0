"""What PyYAML lets through or reports unhelpfully in a recipe: a key given twice (PyYAML keeps the later value
silently, so a typo'd second `learning_rate: 5.0` would train at 5.0), and an unclosed bracket or quote (PyYAML
names the line where it gave up, after the broken one)."""

import yaml

from sft.errors import UserError

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
