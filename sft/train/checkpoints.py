"""Checkpoints in output_dir: which ones are whole, which one to resume from, and the final save of model,
tokenizer and template.

A checkpoint is trusted only when its marker (COMPLETE_MARKER, written last by
sft.train.preemption.MarkCompleteCheckpoints once every rank has saved and fsynced its part) lists every file with
its size and a digest of its first and last MiB, and the files on disk still match. A truncated, emptied or deleted
file (a full disk, a kill during a copy, a careless `rm`) then shows before resuming, and the run falls back to
the previous whole checkpoint instead of resuming with a fresh optimizer or RNG state. The digest covers the ends
of each file only, so verifying a checkpoint of hundreds of GB costs milliseconds: it catches truncation and
replacement, not a flipped bit in the middle."""

import hashlib
import json
import os
import re
from pathlib import Path

from sft.errors import UserError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "sft-complete.json"
ENDS = 1 << 20  # bytes digested at each end of a file


def file_digest(path: Path) -> str:
    """blake2b of the first and last MiB of a file (the whole file when smaller)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(ENDS))
        if size > ENDS:
            handle.seek(max(ENDS, size - ENDS))
            digest.update(handle.read(ENDS))
    return digest.hexdigest()


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)


def fsync_paths(paths) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            # Another rank's temporary file, renamed away after it was listed (a rank can reach the checkpoint's
            # end while rank 0 still writes its files); that rank syncs the final file itself before the barrier.
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Every file under folder and the folders themselves on disk, so a marker written after never outlives them."""
    fsync_paths([*checkpoint_files(folder), *sorted(p for p in folder.rglob("*") if p.is_dir()), folder])


def manifest(folder: Path) -> dict:
    """relative path -> [size, digest] for every file of a checkpoint."""
    return {str(p.relative_to(folder)): [p.stat().st_size, file_digest(p)] for p in checkpoint_files(folder)}


def damage(folder: Path) -> str | None:
    """Why a checkpoint cannot be trusted (missing, unreadable or mismatching marker or file), or None if whole."""
    try:
        record = json.loads((folder / COMPLETE_MARKER).read_text())
    except FileNotFoundError:
        return "not marked complete"
    except (OSError, ValueError):
        return f"{COMPLETE_MARKER} is unreadable"
    for name, (size, digest) in record.get("files", {}).items():  # markers of older sft versions list no files
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        found = path.stat().st_size
        if found != size:
            return f"{name} has {found:,} bytes, {size:,} were saved"
        if file_digest(path) != digest:
            return f"{name} differs from what was saved"
    return None


def numbered_checkpoints(output_dir) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def complete_checkpoints(output_dir) -> list[Path]:
    """Whole checkpoints (marked complete and matching their marker), oldest first."""
    return [p for p in numbered_checkpoints(output_dir) if damage(p) is None]


def newest_whole_checkpoint(output_dir) -> tuple[Path | None, list[str]]:
    """(the newest whole checkpoint or None, a note per newer marked checkpoint passed over because it is damaged).
    Checkpoints never marked complete are partial saves and passed over without a word, as before."""
    notes = []
    for folder in reversed(numbered_checkpoints(output_dir)):
        why = damage(folder)
        if why is None:
            return folder, notes
        if why != "not marked complete":
            notes.append(f"{folder.name} is damaged ({why}); not resuming from it")
    return None, notes


def resume_checkpoint(recipe) -> tuple[str | None, list[str]]:
    """(the checkpoint to resume from, notes): the recipe's explicit one (a path, or true for the newest), else the
    newest whole one unless resume: false. Fails in one line for a path that is no checkpoint, or when every marked
    checkpoint is damaged (resuming none of them silently would mix a new run into an old one's folder)."""
    explicit, output_dir = recipe.training.resume_from_checkpoint, recipe.training.output_dir
    asked_newest = isinstance(explicit, bool) or str(explicit).lower() in ("true", "last", "latest")
    if explicit and not asked_newest:
        folder = Path(explicit)
        if not folder.is_dir():
            raise UserError(f"resume_from_checkpoint: {explicit} does not exist; give a checkpoint-N folder, or "
                            "leave the key out to resume from the newest whole checkpoint in output_dir")
        why = damage(folder)
        if why and why != "not marked complete" or not (folder / "trainer_state.json").is_file():
            raise UserError(f"resume_from_checkpoint: {explicit} is not a whole checkpoint "
                            f"({why or 'no trainer_state.json'}); give another checkpoint-N folder")
        return str(folder), []
    if not (recipe.sft.resume or asked_newest):
        return None, []
    found, notes = newest_whole_checkpoint(output_dir)
    if found is None and notes:
        raise UserError(f"{output_dir}: no whole checkpoint to resume from ({'; '.join(notes)}); pass --fresh to move "
                        "this run aside and start over")
    if found is None and asked_newest and explicit:
        raise UserError(f"resume_from_checkpoint: {explicit}: {output_dir} holds no complete checkpoint; remove the "
                        "key to start a new run")
    return (str(found) if found else None), notes


def reached_end(checkpoint, recipe) -> str | None:
    """The recipe's goal (e.g. "max_steps 2") when the checkpoint already reached it, else None."""
    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    step, training = state.get("global_step", 0), recipe.training
    if training.max_steps > 0:
        return f"max_steps {training.max_steps}" if step >= training.max_steps else None
    planned = state.get("max_steps") or 0
    finished = 0 < planned <= step and state.get("epoch", 0) >= training.num_train_epochs - 1e-6
    return f"num_train_epochs {training.num_train_epochs:g}" if finished else None


def generation_config_for(generation, tokenizer, stop_token: str | None):
    """A generation config that stops on the trained end-of-turn token (and eos) and pads with the pad token."""
    stop_ids = [tokenizer.convert_tokens_to_ids(stop_token)] if stop_token else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop_ids:
        stop_ids.append(tokenizer.eos_token_id)
    generation.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    generation.pad_token_id = tokenizer.pad_token_id
    return generation


def save_final(trainer, tokenizer, output_dir, stop_token: str | None) -> None:
    """Model or adapter, tokenizer with chat template, and a generation config that stops on the trained token."""
    from transformers import GenerationConfig

    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    generation = base.generation_config if base.generation_config is not None else GenerationConfig()
    base.generation_config = generation_config_for(generation, tokenizer, stop_token)
    trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(output_dir))
        base.generation_config.save_pretrained(str(output_dir))
