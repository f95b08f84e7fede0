"""One fine-tuning run, top to bottom: recipe -> tokenizer and template -> data and masks -> model -> train -> save.

Run it as `sft train RECIPE [--key value ...]`, `python sft/run.py RECIPE [...]`, or under
`accelerate launch [--config_file accelerate_configs/NAME.yaml] sft/run.py RECIPE [...]`.
Everything that can be wrong with the input is checked before output_dir is touched.
"""

import os
import sys
import time

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: import the `sft` package, not sibling modules as top-level ones


def say(message: str) -> None:
    """One line for the user, from the main process only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"sft: {message}", file=sys.stderr, flush=True)


def train(recipe_address: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    from sft.recipe import load_recipe

    recipe = load_recipe(recipe_address, overrides)
    for note in recipe.notes:
        say(note)

    # Tokenizer and chat template.
    from sft.chat_templates import apply_template, check_has_template, end_of_turn_token, needs_chat_template
    from sft.modeling import check_model_source, load_tokenizer

    check_model_source(recipe)
    tokenizer = load_tokenizer(recipe)
    added_tokens = apply_template(tokenizer, recipe)

    # Data: read every row, render, tokenize and mask (errors name the file and row).
    from sft.data import default_loss_mode, load_recipe_data
    from sft.masks import tokenize_dataset

    train_rows, eval_rows, info = load_recipe_data(recipe)
    if needs_chat_template(info["format"], recipe):
        check_has_template(tokenizer, recipe.source)
    loss_mode = recipe.sft.loss_mode or default_loss_mode(info["format"])
    tokenize = dict(tokenizer=tokenizer, loss_mode=loss_mode, max_length=recipe.training.max_length,
                    truncation_mode=recipe.training.truncation_mode, skip_bad_rows=recipe.sft.skip_bad_rows,
                    max_dropped_fraction=recipe.sft.max_dropped_fraction)
    train_set, stats = tokenize_dataset(train_rows, source=recipe.script.dataset_name, **tokenize)
    eval_set = tokenize_dataset(eval_rows, source="eval split", **tokenize)[0] if eval_rows is not None else None
    say(f"data: {stats['kept']} examples ({info['format']}, loss on {loss_mode}), {stats['tokens']:,} tokens, "
        f"{stats['trained_tokens'] / max(stats['tokens'], 1):.0%} trained; {stats['dropped_truncated']} dropped "
        f"(all trained tokens past max_length), {stats['skipped_bad'] + info['skipped']} bad rows skipped")

    # Model for the chosen method.
    from sft.checkpoints import resume_checkpoint, save_final
    from sft.modeling import load_model, peft_config

    resume_from = resume_checkpoint(recipe)
    model = load_model(recipe, tokenizer, added_tokens)

    # Only now, with every input checked, is output_dir written.
    from pathlib import Path

    from trl import SFTTrainer

    from sft.recipe import write_resolved

    output_dir = Path(recipe.training.output_dir)
    trainer = SFTTrainer(
        model=model,
        args=recipe.training,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
    )
    if trainer.accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(recipe, output_dir / "recipe.yaml", {"data": stats})
    if resume_from:
        say(f"resuming from {resume_from} (set resume: false or pass --fresh to start over)")
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    save_final(trainer, tokenizer, output_dir, end_of_turn_token(tokenizer))

    summary = {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "seconds": time.time() - started,
        "output_dir": str(output_dir),
    }
    say(f"done: {summary['steps']} steps, train loss {summary['train_loss']:.4f}, {summary['tokens_seen']:,} tokens "
        f"seen, {summary['seconds']:.1f} s; model saved to {output_dir}")
    if hasattr(trainer, "end"):
        trainer.end()
    return summary


def main(argv: list[str] | None = None) -> None:
    """`python sft/run.py RECIPE [--key value ...]`: the same run as `sft train`."""
    from sft.errors import exit_on_user_error, take_debug_flag

    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    exit_on_user_error(train, argv[0], [a if a != "--fresh" else "--resume=false" for a in argv[1:]])


if __name__ == "__main__":
    main()
