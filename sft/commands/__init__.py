"""One module per `sft` subcommand; each exposes `command`. Keep imports here light (no torch at import)."""
