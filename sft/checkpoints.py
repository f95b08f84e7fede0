"""Checkpoints in output_dir: which one to resume from, and the final save of model, tokenizer and template."""

import re
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written last, by sft.preemption.MarkCompleteCheckpoints, once every rank has saved its part: a checkpoint
# without it is partial (the Trainer's own trainer_state.json is written by rank 0 alone, not atomically).
COMPLETE_MARKER = "sft-complete.json"


def complete_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).is_file()]


def resume_checkpoint(recipe) -> str | None:
    """The checkpoint to resume from: the recipe's explicit one, else the newest complete one (unless resume: false)."""
    explicit = recipe.training.resume_from_checkpoint
    if explicit:
        return explicit
    if not recipe.sft.resume:
        return None
    found = complete_checkpoints(recipe.training.output_dir)
    return str(found[-1]) if found else None


def save_final(trainer, tokenizer, output_dir, stop_token: str | None) -> None:
    """Model or adapter, tokenizer with chat template, and a generation config that stops on the trained token."""
    from transformers import GenerationConfig

    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    generation = base.generation_config if base.generation_config is not None else GenerationConfig()
    stop_ids = [tokenizer.convert_tokens_to_ids(stop_token)] if stop_token else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
        stop_ids.append(tokenizer.eos_token_id)
    generation.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    generation.pad_token_id = tokenizer.pad_token_id
    base.generation_config = generation
    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(output_dir))
        generation.save_pretrained(str(output_dir))
