"""Loading a recipe: a flat YAML file (plus command-line overrides) becomes TRL's own dataclasses.

Anything that is not a key of sft/recipe/fields.py fails before a model or a dataset is touched. Nothing is
loaded or written besides the recipe file itself.
"""

import os
import re
from pathlib import Path

from sft.errors import UserError
from sft.migrate.detect import refuse_foreign_config
from sft.recipe.checks import check_values, one_line
from sft.recipe.coercion import check_keys, resolve_path
from sft.recipe.command_line import as_written_for_text_fields, plain_scalar_texts, typed_overrides
from sft.recipe.fields import (PATH_KEYS, RENAMED_VALUES, SFT_DEFAULTS, Recipe, field_type, known_fields,
                               recipe_dataclasses)
from sft.recipe.finalize import finalize_values
from sft.recipe.reading import RecipeFile, locate, read_yaml_with_lines
from sft.recipe.schema import fast_fields


def load_recipe(address: str | None, overrides: list[str] | tuple[str, ...] = (),
                adapt_to_hardware: bool = True) -> Recipe:
    """Read, check and build a recipe (None: every key from the command line, as `trl sft --model_name_or_path M
    ...`). Nothing is loaded or written besides the recipe file itself."""
    if address is None:
        recipe_file, data, lines, texts = RecipeFile(path=None, display="command line", base_dir=Path.cwd()), {}, {}, {}
    else:
        recipe_file = locate(address)
        data, lines = read_yaml_with_lines(recipe_file)
        refuse_foreign_config(data, recipe_file.display)  # an axolotl or LLaMA-Factory file: point to `sft migrate`
        texts = plain_scalar_texts(recipe_file.path.read_text())

    def line_of(key):
        return f"{recipe_file.display}:{lines.get(key, 1)}"

    fast = fast_fields()
    if fast is not None:  # typos and bad simple values, before TRL is imported (seconds)
        checked_keys(data, texts, overrides, line_of, [], fast)
    notes: list[str] = []
    values, from_command_line = checked_keys(data, texts, overrides, line_of, notes)
    values.update(from_command_line)
    provenance = values.pop("provenance", None)  # an earlier run's resolved recipe

    for key in PATH_KEYS:
        if key in values:
            values[key] = resolve_path(values[key], recipe_file.base_dir)
    if values.get("env"):
        os.environ.update({str(k): str(v) for k, v in values["env"].items()})

    explicit = dict(values)
    for key, value in SFT_DEFAULTS.items():
        values.setdefault(key, value)
    finalize_values(values, recipe_file.display, notes, adapt_to_hardware)

    sections: dict[str, dict] = {name: {} for name in recipe_dataclasses()}
    table = known_fields()
    for key, value in values.items():
        for section, _, _ in table[key]:
            sections[section][key] = value

    def where(key):
        return ("command line" if key in from_command_line else f"{recipe_file.display}:{lines[key]}" if key in lines
                else recipe_file.display)

    built = {}
    for section, cls in recipe_dataclasses().items():
        try:  # the dataclasses' own checks (TrainingArguments' __post_init__): one line naming the key they name
            built[section] = cls(**sections[section])
        except (ValueError, TypeError) as err:
            message = one_line(str(err)) or type(err).__name__
            named = sorted((m.start(), k) for k in explicit if (m := re.search(rf"\b{re.escape(k)}\b", message)))
            shown = where(named[0][1]) if named else recipe_file.display  # the key the message names first
            raise UserError(f"{shown}: invalid settings: {message}") from err
    if built["model"].model_name_or_path is None:
        raise UserError(f"{recipe_file.display}: missing key 'model_name_or_path' (a local model folder or a Hub "
                        "name)")
    recipe = Recipe(**built, source=recipe_file.display, base_dir=recipe_file.base_dir, explicit=explicit, notes=notes,
                    command_line=frozenset(from_command_line), provenance=provenance)
    check_values(recipe, where, from_command_line)
    return recipe


def checked_keys(data: dict, texts: dict, overrides, where, notes: list,
                 table: dict | None = None) -> tuple[dict, dict]:
    """(the recipe's and the command line's values, the command line's alone), keys and types checked against
    `table` (default: the imported dataclasses)."""
    def type_of(key):
        return field_type(key, table)

    values = check_keys(as_written_for_text_fields(data, texts, type_of), where, notes, table=table)
    typed = typed_overrides(overrides, type_of, untyped_keys=RENAMED_VALUES)
    from_command_line = check_keys(typed, lambda k: "command line", notes, option_style=True, table=table)
    return values, from_command_line
