"""Chat templates: sft's built-in ones (the .jinja files beside this module) and the choice between them, the
tokenizer's own, inline Jinja and a .jinja file (sft.templates.chat)."""
