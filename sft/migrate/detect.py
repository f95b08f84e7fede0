"""Whose config a YAML mapping is (axolotl, LLaMA-Factory or neither), from keys no sft recipe has; the recipe
loader calls `refuse_foreign_config` before its unknown-key check. Standard library only: the recipe loader imports
this."""

from sft.errors import UserError
from sft.migrate import axolotl, llamafactory

TOOLS = {"axolotl": axolotl, "LLaMA-Factory": llamafactory}


def foreign_tool(data: dict) -> str | None:
    """'axolotl', 'LLaMA-Factory', or None for anything else (an sft or TRL recipe, or a broken file)."""
    for name, tool in TOOLS.items():
        if tool.looks_like(data):
            return name
    return None


def refuse_foreign_config(data: dict, display: str) -> None:
    """Raise a one-line UserError when the recipe file is another tool's config."""
    tool = foreign_tool(data)
    if tool:
        raise UserError(f"{display} is a config for {tool}, not an sft recipe; convert it with `sft migrate {display} "
                        f"-o recipe.yaml` (it lists what maps and what does not), then `sft train recipe.yaml`")
