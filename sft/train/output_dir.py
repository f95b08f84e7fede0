"""What output_dir already holds, decided before a run writes into it: a finished model is never overwritten, a
fresh start moves the earlier run aside instead of mixing into it, and a run killed during its final save is
finished from its last checkpoint instead of being reported as done without a model.

FINISHED_MARKER is written last, after the final model, tokenizer and generation config are on disk."""

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError
from sft.io import write_atomic
from sft.train.checkpoints import (COMPLETE_MARKER, damage, fsync_paths, manifest, numbered_checkpoints, reached_end,
                                  resume_checkpoint)

FINISHED_MARKER = "sft-finished.json"
# Files of a saved model (full weights, sharded index, adapter, or a pickled model from another tool).
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
               "adapter_model.bin")
# A run's own records, besides the model: a folder holding any of these holds a run.
RUN_FILES = (FINISHED_MARKER, "metrics.jsonl", "samples.jsonl", "recipe.yaml")
# What a checkpoint holds beyond the model and tokenizer: never copied into the final model folder.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "latest",
                  "zero_to_fp32.py", COMPLETE_MARKER)


@dataclass
class StartPoint:
    """Where a run starts, decided from output_dir before anything is written."""

    resume_from: str | None = None  # a checkpoint to train on from
    finish_from: str | None = None  # a checkpoint that reached the end: only the final save is left to do
    move_aside: bool = False  # --fresh over an earlier run: move it aside first
    notes: list[str] = field(default_factory=list)  # damaged checkpoints passed over


def start_point(recipe) -> StartPoint:
    """Resume, finish a final save, start over (moving an earlier run aside), or refuse a finished run."""
    output_dir = recipe.training.output_dir
    resume_from, notes = resume_checkpoint(recipe)
    if resume_from:
        goal = reached_end(resume_from, recipe)
        if goal and finished_model(output_dir) == FINISHED_MARKER:
            refuse_finished_run(output_dir, resume_from, goal)
        if goal:
            return StartPoint(finish_from=resume_from, notes=notes)
        return StartPoint(resume_from=resume_from, notes=notes)
    if recipe.sft.resume:
        refuse_finished_model(output_dir)
    return StartPoint(move_aside=not recipe.sft.resume and holds_a_run(output_dir), notes=notes)


def finished_model(output_dir) -> str | None:
    """The file that shows output_dir holds a finished model (sft's marker, or model weights), or None."""
    root = Path(output_dir)
    return next((name for name in (FINISHED_MARKER, *MODEL_FILES) if (root / name).is_file()), None)


def holds_a_run(output_dir) -> bool:
    root = Path(output_dir)
    return bool(numbered_checkpoints(root)) or finished_model(root) is not None or any(
        (root / name).exists() for name in RUN_FILES)


def refuse_finished_model(output_dir) -> None:
    """A finished model with no checkpoint to train on from: a new run would overwrite it and append its metrics to
    the old run's."""
    found = finished_model(output_dir)
    if found:
        raise UserError(f"{output_dir}: holds a finished model ({found}) and no checkpoint to train on from; nothing "
                        "was changed. Choose another output_dir, or pass --fresh to move this run aside and start "
                        "over")


def refuse_finished_run(output_dir, checkpoint, goal: str) -> None:
    raise UserError(f"{output_dir}: this run is finished ({Path(checkpoint).name} reached {goal}); nothing was "
                    "changed. Raise max_steps or num_train_epochs to train on, or pass --fresh (resume: false) to "
                    "move this run aside and start over")


def move_aside(output_dir) -> Path | None:
    """Rename output_dir to output_dir.previous-TIMESTAMP when it holds an earlier run (every file kept, the user's
    own too); None when there was nothing to move. The caller holds output_dir's lock, so no run is writing it."""
    root = Path(output_dir)
    if not root.is_dir() or not holds_a_run(root):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = root.with_name(f"{root.name}.previous-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = root.with_name(f"{root.name}.previous-{stamp}-{suffix}")
    root.rename(target)
    return target


def mark_finished(output_dir, global_step: int) -> None:
    """Written last: the final model's files (sizes and digests) are on disk."""
    root = Path(output_dir)
    files = {name: entry for name, entry in manifest(root).items()
             if "/" not in name and not name.startswith(".") and name not in RUN_FILES}
    fsync_paths([root / name for name in files])
    write_atomic(root / FINISHED_MARKER, json.dumps({"global_step": global_step, "files": files}) + "\n")


def finish_from_checkpoint(checkpoint, output_dir, tokenizer, stop_token: str | None) -> list[str]:
    """The final save of a run whose last checkpoint reached its end but whose final save never finished: the
    checkpoint's model (or adapter) files, the tokenizer with its template, and the generation config. Returns the
    model files copied; fails in one line when the checkpoint holds no consolidated weights (a ZeRO-3 checkpoint
    saved without zero3_save_16bit_model)."""
    from transformers import GenerationConfig

    from sft.train.checkpoints import generation_config_for

    source, root = Path(checkpoint), Path(output_dir)
    why = damage(source)
    if why:
        raise UserError(f"{source}: cannot finish the final save from it ({why}); pass --fresh to start over")
    copied = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in TRAINING_STATE or path.name.startswith("rng_state"):
            continue
        temporary = root / f".{path.name}.{os.getpid()}.tmp"
        shutil.copyfile(path, temporary)
        temporary.replace(root / path.name)
        copied.append(path.name)
    if not any(name in MODEL_FILES or name.startswith("model-") for name in copied):
        raise UserError(f"{source}: holds no model weights to finish the final save from (a ZeRO-3 checkpoint without "
                        "zero3_save_16bit_model); run `zero_to_fp32.py` in it, or pass --fresh to start over")
    generation = (GenerationConfig.from_pretrained(source) if (source / "generation_config.json").is_file()
                  else GenerationConfig())
    tokenizer.save_pretrained(str(root))
    generation_config_for(generation, tokenizer, stop_token).save_pretrained(str(root))
    return copied
