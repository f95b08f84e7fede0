"""sft: supervised fine-tuning of LLMs from one recipe file."""

__version__ = "0.1.0"
