"""Chat templates: the tokenizer's own, a built-in one by name, inline Jinja, or a .jinja file.

A built-in template's special tokens are added to the tokenizer (and the model's embeddings resized) so that
each is one token, and everything is saved with the model. chatml and llama3 render tool calls and tool turns;
mistral and gemma require alternating user/assistant turns; alpaca is an instruction-style template."""

from importlib import resources
from pathlib import Path

from sft.errors import UserError

# name -> special tokens the template needs as single tokens
BUILTIN_TEMPLATES = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "mistral": ["[INST]", "[/INST]"],
    "zephyr": ["<|system|>", "<|user|>", "<|assistant|>"],
    "gemma": ["<start_of_turn>", "<end_of_turn>"],
    "alpaca": [],
}


def builtin_template(name: str) -> str:
    return resources.files("sft.templates").joinpath(f"{name}.jinja").read_text()


def is_inline_jinja(value: str) -> bool:
    """Jinja text rather than a template name or a file path (alignment-handbook recipes carry templates inline)."""
    return "{%" in value or "{{" in value or "{#" in value or "\n" in value


def resolve_template(value: str | None, path: str | None, source: str) -> tuple[str | None, list[str]]:
    """(Jinja text or None for the tokenizer's own, special tokens to add) from the recipe's settings."""
    if path:
        value = path
    if not value:
        return None, []
    if value in BUILTIN_TEMPLATES:
        return builtin_template(value), BUILTIN_TEMPLATES[value]
    if is_inline_jinja(value):
        return value, []
    if value.endswith(".jinja") or Path(value).is_file():
        if not Path(value).is_file():
            raise UserError(f"{source}: chat template file {value} not found")
        return Path(value).read_text(), []
    raise UserError(
        f"{source}: chat_template {value!r} is not a built-in template ({', '.join(BUILTIN_TEMPLATES)}), "
        "inline Jinja, or a .jinja file"
    )


def set_template(tokenizer, value: str | None, path: str | None = None, source: str = "recipe") -> list[str]:
    """Set a chat template (name, Jinja or file; None keeps the tokenizer's own). Returns the special tokens added
    (the caller resizes the model's embeddings)."""
    template, tokens = resolve_template(value, path, source)
    added = []
    if template is not None:
        new = [t for t in tokens if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
            added = new
        tokenizer.chat_template = template
    refuse_invalid_jinja(tokenizer.chat_template, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return added


def refuse_invalid_jinja(template, source: str) -> None:
    """Compile the template as transformers will, so a Jinja syntax error is reported as such, with its line
    (otherwise it surfaces later as a misleading finding about the template's contents)."""
    if not isinstance(template, str):
        return  # no template, or a tokenizer's dict of named templates
    from jinja2 import TemplateError, TemplateSyntaxError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateSyntaxError as err:
        raise UserError(f"{source}: the chat template is not valid Jinja: line {err.lineno} of the template: "
                        f"{err.message}") from None
    except TemplateError as err:
        raise UserError(f"{source}: the chat template is not valid Jinja: {err}") from None


def apply_template(tokenizer, recipe) -> list[str]:
    """Set the recipe's chat template on the tokenizer. Returns the special tokens added (the caller resizes)."""
    return set_template(tokenizer, recipe.sft.chat_template, recipe.training.chat_template_path, recipe.source)


def check_has_template(tokenizer, source: str) -> None:
    if not tokenizer.chat_template:
        raise UserError(
            f"{source}: the tokenizer has no chat template and chat data needs one; set chat_template to one of "
            f"{', '.join(BUILTIN_TEMPLATES)}, inline Jinja, or a .jinja file"
        )
