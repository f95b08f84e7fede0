"""Checkpoints in output_dir: which one to resume from, and the final save of model, tokenizer and template."""

import json
import re
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written last, by sft.train.preemption.MarkCompleteCheckpoints, once every rank has saved its part: a checkpoint
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


def refuse_finished(checkpoint: str, recipe) -> None:
    """Resuming from a checkpoint that already reached the recipe's end would train one step more and rewrite
    the final model: say the run is finished instead, and change nothing."""
    from sft.errors import UserError

    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        return
    state = json.loads(state_file.read_text())
    step, training = state.get("global_step", 0), recipe.training
    if training.max_steps > 0:
        finished, goal = step >= training.max_steps, f"max_steps {training.max_steps}"
    else:
        planned = state.get("max_steps") or 0
        finished = 0 < planned <= step and state.get("epoch", 0) >= training.num_train_epochs - 1e-6
        goal = f"num_train_epochs {training.num_train_epochs:g}"
    if finished:
        raise UserError(f"{training.output_dir}: this run is finished ({Path(checkpoint).name} reached {goal}); "
                        "nothing was changed. Raise max_steps or num_train_epochs to train on, or pass --fresh "
                        "(resume: false) to start over")


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
