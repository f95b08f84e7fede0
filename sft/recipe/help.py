"""`sft train --help-all`: every key a recipe accepts, generated from the dataclasses the keys land in and grouped
by where each comes from (sft, TRL, transformers, PEFT, bitsandbytes). Imports TRL: only when asked."""

import dataclasses
import re
import textwrap
import typing

PEFT_KEYS = ("use_peft", "use_dora", "use_rslora")
QUANTIZATION_PREFIXES = ("load_in_", "bnb_", "use_bnb_")


def _group(section: str, name: str, training_args_names: set) -> str:
    if section == "sft":
        return "sft's own keys"
    if section == "training":
        if name in training_args_names:
            return "transformers TrainingArguments (through TRL's SFTConfig)"
        return "TRL SFTConfig: SFT-specific"
    if section == "model":
        if name in PEFT_KEYS or name.startswith("lora_"):
            return "TRL ModelConfig -> PEFT LoraConfig (LoRA / QLoRA adapters)"
        if name.startswith(QUANTIZATION_PREFIXES):
            return "TRL ModelConfig -> bitsandbytes quantization"
        return "TRL ModelConfig: model loading"
    return {"script": "TRL ScriptArguments: data", "mixture": "TRL DatasetMixtureConfig: data mixtures"}[section]


def _type_text(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    text = text or str(tp)
    return re.sub(r"\b(?:[a-z_]\w*\.)+(\w+)", r"\1", text).replace("NoneType", "None")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = getattr(f.default, "value", f.default)
        return "" if value is None else f" = {value!r}"
    if f.default_factory is not dataclasses.MISSING:
        return f" = {f.default_factory()!r}"
    return ""


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    match = re.match(r"(.+?\.)\s+(?=[A-Z`])", text)  # not at "e.g. {..."
    return match.group(1) if match else text


def every_key_text(width: int = 118) -> str:
    from sft.recipe.fields import RENAMED_KEYS
    from sft.recipe.schema import fast_fields, training_arguments_names

    table, training_args_names = fast_fields(), training_arguments_names()
    if table is None:  # the packages are laid out otherwise than sft/recipe/schema.py expects: import them
        from transformers import TrainingArguments

        from sft.recipe.fields import known_fields

        table, training_args_names = known_fields(), {f.name for f in dataclasses.fields(TrainingArguments)}
    groups: dict[str, list[str]] = {}
    for name, places in table.items():
        section, f, tp = places[0]
        also = [s for s, _, _ in places[1:]]
        line = f"{name} ({_type_text(tp)}{_default_text(f)})"
        help_text = f.metadata.get("help", "")
        help_text = " ".join(help_text.split()) if section == "sft" else _first_sentence(help_text)
        if also:
            help_text += f" Also sets the {', '.join(also)} field of the same name."
        body = textwrap.fill(f"{line}: {help_text}" if help_text else line, width=width, initial_indent="  ",
                             subsequent_indent="      ")
        groups.setdefault(_group(section, name, training_args_names), []).append(body)
    order = ["sft's own keys", "TRL ScriptArguments: data", "TRL DatasetMixtureConfig: data mixtures",
             "TRL ModelConfig: model loading", "TRL ModelConfig -> PEFT LoraConfig (LoRA / QLoRA adapters)",
             "TRL ModelConfig -> bitsandbytes quantization", "TRL SFTConfig: SFT-specific",
             "transformers TrainingArguments (through TRL's SFTConfig)"]
    parts = ["Every key a recipe (or --key value on the command line) accepts, by where it comes from."]
    for title in order + [t for t in groups if t not in order]:
        if title in groups:
            parts.append(f"\n{title} ({len(groups[title])} keys):\n" + "\n".join(groups[title]))
    renamed = ", ".join(f"{old} -> {new}" for old, new in RENAMED_KEYS.items())
    parts.append("\nOld names, read as today's (one note each):\n" + textwrap.fill(renamed, width, initial_indent="  ",
                                                                                  subsequent_indent="  "))
    return "\n".join(parts)
