"""The one place a recipe is changed. Everything else reads it.

Two moments, both before anything is written:
- `finalize_values`, while the recipe is read (on its values, before TRL's dataclasses are built: their checks
  refuse bf16 on a CPU machine): `method` and TRL's switches made one, this machine's precision and backend,
  the fallbacks of requests it cannot honour (flash attention, Liger, padding-free on CPU), TRL's loss switches
  read as `loss_mode`, and early stopping's metric.
- `finalize_run`, at the start of the training process: the fixes its launch needs (ZeRO-3/FSDP storage and
  device maps, reentrant checkpointing, accumulation from global_batch_size) and the push request (sft pushes
  the finished run itself, so the Trainer's own pushes are turned off).

The resolved recipe (sft/recipe/resolved.py) then records what was asked for: hardware values as the recipe set
them, push_to_hub as asked. A run started from a resolved recipe (it has `provenance`) does not push unless its
command line sets `push_to_hub` or `hub_model_id`, so reproducing someone's run never pushes to their repo.
"""

import dataclasses
from pathlib import Path

from sft.errors import UserError

# Keys that say where to push: a reproduction pushes only when its command line names one of them.
PUSH_KEYS = {"push_to_hub", "hub_model_id"}


def finalize_values(values: dict, where: str, notes: list, adapt_to_hardware: bool = True) -> None:
    """Change a recipe's checked values in place (one note per change the user should know about)."""
    if adapt_to_hardware:
        from sft.capabilities import decide, this_machine
        from sft.train.hardware import hardware_choices

        changes, hardware_notes = hardware_choices(values)
        values.update(changes)
        notes += hardware_notes
        for fallback in decide(values, this_machine()):  # flash attention, Liger, trackers: fall back on CPU
            values[fallback.key] = fallback.value
            notes.append(fallback.note)
    method_values(values)
    loss_mode_values(values, where, notes)
    early_stopping_values(values)


def method_values(values: dict) -> None:
    """`method` and TRL's own switches (use_peft, load_in_4bit, load_in_8bit) describe the same thing."""
    method = values.get("method")
    if method is None:
        method = "qlora" if values.get("load_in_4bit") else "lora" if values.get("use_peft") else "full"
        values["method"] = method
    if method in ("lora", "qlora"):
        values["use_peft"] = True
    if method == "qlora":
        if values.get("load_in_8bit"):
            raise UserError("method qlora uses a 4-bit base; remove load_in_8bit (or use method: lora with "
                            "load_in_8bit: true)")
        values["load_in_4bit"] = True
        values.setdefault("bnb_4bit_quant_type", "nf4")
        values.setdefault("use_bnb_nested_quant", True)  # double quantization
    if method in ("full", "freeze") and (values.get("use_peft") or values.get("load_in_4bit")
                                         or values.get("load_in_8bit")):
        raise UserError(f"method {method} trains the base weights; remove use_peft/load_in_4bit/load_in_8bit or "
                        "use method: lora or qlora")
    if method == "freeze" and not values.get("trainable_layers") and not values.get("trainable_modules"):
        raise UserError("method freeze needs trainable_layers (the last N blocks) and/or trainable_modules "
                        "(name patterns)")
    if values.get("use_peft") and not values.get("lora_target_modules"):
        values["lora_target_modules"] = ["all-linear"]


def loss_mode_values(values: dict, where: str, notes: list) -> None:
    """TRL's own loss switches read as loss modes, because sft hands the trainer finished labels. No loss_mode
    means each example's default (assistant for chat, completion for instruction and prompt/completion, all for
    text)."""
    mode = values.get("loss_mode")
    if values.get("assistant_only_loss"):
        if mode not in (None, "assistant"):
            raise UserError(f"{where}: assistant_only_loss: true contradicts loss_mode: {mode}; keep one")
        notes.append("assistant_only_loss: true is read as loss_mode: assistant (sft masks assistant turns for any "
                     "template)")
        values["loss_mode"], values["assistant_only_loss"] = "assistant", False
    elif values.get("completion_only_loss") is False and mode is None:
        values["loss_mode"] = "all"
        notes.append("completion_only_loss: false is read as loss_mode: all")


def early_stopping_values(values: dict) -> None:
    """Early stopping watches eval_loss unless told otherwise; perplexity, like a loss, is better lower
    (transformers assumes higher is better for names not ending in "loss"). sft/callbacks.py refuses early
    stopping without evaluations."""
    if not values.get("early_stopping_patience"):
        return
    if values.get("metric_for_best_model") is None:
        values["metric_for_best_model"], values["greater_is_better"] = "eval_loss", False
    elif "perplexity" in values["metric_for_best_model"] and "greater_is_better" not in values:
        values["greater_is_better"] = False


def fit_to_launch(recipe, zero_stage: int | None, world_size: int, on_gpu: bool,
                  deepspeed_config: dict | None = None, fsdp: bool = False) -> list[str]:
    """Apply the fixes this launch needs (sft/launch/profiles.py decides them, or refuses); one note each."""
    from sft.launch.profiles import combination_fixes

    fixes, notes = combination_fixes(recipe, zero_stage, world_size, on_gpu, deepspeed_config, fsdp)
    for fix in fixes:
        if fix.key == "gradient_accumulation_steps":
            # A copy re-runs TrainingArguments' post-init, which fills DeepSpeed's "auto" batch sizes from it.
            recipe.training = dataclasses.replace(recipe.training, gradient_accumulation_steps=fix.value)
        else:
            setattr(getattr(recipe, fix.section), fix.key, fix.value)
    return notes


def finalize_run(recipe) -> dict | None:
    """At the start of a training process: fit the recipe to this process's launch, and take the push request.
    Returns push_run's arguments, or None when the run does not push."""
    from sft.launch.profiles import running_launch

    recipe.notes += fit_to_launch(recipe, *running_launch(recipe.training))
    return take_push_request(recipe)


def take_push_request(recipe) -> dict | None:
    """`push_to_hub: true`: sft pushes the finished run itself, after the final save, with its model card; the
    Trainer's own pushes (every checkpoint, its own card) are turned off for this run, and the resolved recipe
    records push_to_hub as asked."""
    push = push_request(recipe)
    training = recipe.training
    if training.push_to_hub:
        recipe.asked["push_to_hub"] = True
        training.push_to_hub = False
        if push is None:
            target = training.hub_model_id or Path(training.output_dir).name
            recipe.notes.append(f"{recipe.source} is the resolved recipe of an earlier run: not pushing to {target} "
                                "(its push_to_hub); pass --push_to_hub true and --hub_model_id YOUR/REPO to push")
    return push


def push_request(recipe) -> dict | None:
    """push_run's arguments for the finished run, or None when it does not push (a resolved recipe pushes only when
    its command line names where); a push without a Hub token is refused. Changes nothing: `sft check` asks too."""
    training = recipe.training
    if not training.push_to_hub or (recipe.provenance is not None and not PUSH_KEYS & recipe.command_line):
        return None
    from sft.hub.addresses import known_token

    if not known_token(training.hub_token):
        raise UserError(f"{recipe.source}: push_to_hub is true but no Hub token was found; set HF_TOKEN, run "
                        "`hf auth login`, or set push_to_hub: false and push later with `sft push`")
    return {"repo_id": training.hub_model_id or Path(training.output_dir).name, "token": training.hub_token,
            "private": bool(getattr(training, "hub_private_repo", False)),
            "revision": getattr(training, "hub_revision", None)}
