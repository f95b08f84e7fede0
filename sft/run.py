"""One fine-tuning run, top to bottom: recipe -> tokenizer and template -> data and masks -> model -> train -> save.

Run it as `sft train RECIPE [--key value ...]` (or TRL's `--config RECIPE [...]`, or every key as a flag),
`python sft/run.py RECIPE [...]`, or under
`accelerate launch [--config_file accelerate_configs/NAME.yaml] sft/run.py RECIPE [...]`.
Everything that can be wrong with the input is checked before output_dir is touched.
"""

import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: import the `sft` package, not sibling modules as top-level ones


def train(recipe_address: str | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    from sft.recipe.load import load_recipe

    # 1. The recipe, checked against what this launch can do (ZeRO stage, world size, precision); first, before the
    #    imports below (seconds), so that a typo is reported at once.
    recipe = load_recipe(recipe_address, overrides)
    from sft.train.checkpoints import save_final
    from sft.train.output_dir import mark_finished
    from sft.console import QuietChecks, say
    from sft.masks.plan import generation_stop_tokens
    from sft.masks.spans import end_of_turn_token
    from sft.recipe.finalize import finalize_run
    from sft.recipe.resolved import write_resolved
    from sft.train.storage import storage_errors_named
    from sft.train.hardware import under_launcher

    if (recipe.sft.accelerate_config or (recipe.sft.num_processes or 1) > 1) and not under_launcher():
        # TRL's `accelerate_config:` / `num_processes:` keys: the run goes multi-process
        from sft.launch.launcher import launch

        raise SystemExit(launch(recipe_address, overrides))
    # The one place a recipe changes for this process (launch fixes, push request), before anything is written.
    push = finalize_run(recipe)  # push_to_hub: pushed once at the end, with a model card

    # 2.-5. Tokenizer, data, model and trainer, every input checked; output_dir locked for this run.
    with QuietChecks():  # no progress bars before a bad input's one line (unless on a terminal)
        trainer, tokenizer, data, start, stop = checked_trainer(recipe)
    for note in recipe.notes + data.notes + start.notes:  # after the input checks: a bad input reads as one line
        say(note)
    say(data.summary())
    from sft.model import trainable_parameters

    say(trainable_parameters(trainer.model))  # after TRL wrapped LoRA/QLoRA: what the optimizer will update
    output_dir = Path(recipe.training.output_dir)
    stop_token = end_of_turn_token(tokenizer,
                                   stop_tokens=generation_stop_tokens(recipe.model.model_name_or_path, tokenizer))
    if start.finish_from:  # killed during its final save: finish it from the checkpoint that reached the end
        return finish_final_save(trainer, tokenizer, start.finish_from, output_dir, stop_token)

    # 6. Train. Only now, with every input checked, is output_dir written.
    with storage_errors_named(output_dir, trainer):  # a full or read-only disk reads as one line naming the path
        if trainer.accelerator.is_main_process:
            write_resolved(recipe, output_dir / "recipe.yaml", {"data": data.stats})
        if start.resume_from:
            say(f"resuming from {start.resume_from} (set resume: false or pass --fresh to start over)")
        started = time.time()
        result = trainer.train(resume_from_checkpoint=start.resume_from)
        if stop.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
            trainer.end()  # a gloo process group left alive aborts the interpreter at exit
            how = "interrupted (Ctrl-C)" if stop.requested_by == "SIGINT" else "stopped on request"
            say(f"{how} at step {stop.stopped_at}: checkpoint-{stop.stopped_at} saved in {output_dir}; the same "
                "command resumes from it")
            return {"steps": trainer.state.global_step, "stopped": True, "interrupted": stop.requested_by == "SIGINT",
                    "output_dir": str(output_dir)}

        # 7. Save the model (or adapter) with tokenizer, template and a generation config that stops where it
        #    learned to; the finished marker last, once every rank's part is on disk.
        save_final(trainer, tokenizer, output_dir, stop_token)
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            mark_finished(output_dir, trainer.state.global_step)
    summary = {
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "seconds": time.time() - started,
        "output_dir": str(output_dir),
    }
    say(f"done: {summary['steps']} steps, train loss {summary['train_loss']:.4f}, {summary['tokens_seen']:,} tokens "
        f"seen, {summary['seconds']:.1f} s; model saved to {output_dir}")
    from sft.data.streaming import StreamingData

    if isinstance(data, StreamingData):  # what a streamed dataset held is known only now
        summary["bad_rows_skipped"] = data.counts.bad
        say(data.final_summary())
    trainer.accelerator.wait_for_everyone()  # no rank takes the process group down while another still saves
    trainer.end()
    if push and trainer.accelerator.is_main_process:
        from sft.hub.publish import push_run

        say(push_run(output_dir, **push))
    return summary


def checked_trainer(recipe):
    """(trainer, tokenizer, data, where to start (sft.train.output_dir.StartPoint), stop callback), every input
    checked and output_dir locked for this run (an earlier run moved aside on --fresh); nothing else written yet."""
    from trl import SFTTrainer

    from sft.train.callbacks import trackers_last
    from sft.templates.chat import apply_template
    from sft.data.prepare import prepare_data
    from sft.train.locking import lock_output_dir_on_all_ranks
    from sft.model import check_against_model, check_model_source, load_model, load_tokenizer, peft_config

    # 2. Tokenizer and chat template.
    check_model_source(recipe)
    tokenizer = load_tokenizer(recipe)
    added_tokens = apply_template(tokenizer, recipe)

    # 3. Data: every row read, rendered, tokenized and masked (errors name file and row); `sft check` runs the same.
    data = prepare_data(recipe, tokenizer)

    # 4. The model for the chosen method, and where to resume from (`sft check` runs the same checks).
    model = load_model(recipe, tokenizer, added_tokens)
    start = check_against_model(recipe, model)

    # 5. The trainer, and output_dir for this run alone (a second run into it stops here, naming this one).
    callbacks, stop = run_callbacks(recipe, tokenizer, data.eval_rows)
    trainer = SFTTrainer(
        model=model,
        args=recipe.training,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
        callbacks=callbacks,
    )
    trackers_last(trainer)  # so report_to gets the metrics our callbacks add (eval_perplexity)
    moved = lock_output_dir_on_all_ranks(recipe.training.output_dir, trainer.accelerator.is_main_process,
                                         trainer.args.device, move_earlier_run=start.move_aside)
    if moved:
        start.notes.append(f"--fresh: the earlier run in {recipe.training.output_dir} was moved to {moved}")
    return trainer, tokenizer, data, start, stop


def finish_final_save(trainer, tokenizer, checkpoint, output_dir, stop_token) -> dict:
    """A run killed during its final save: the model of its last checkpoint (which reached the recipe's end)
    saved as the final model, without training a step more."""
    from sft.console import say
    from sft.train.output_dir import finish_from_checkpoint, mark_finished

    step = int(Path(checkpoint).name.split("-")[-1])
    if trainer.accelerator.is_main_process:
        finish_from_checkpoint(checkpoint, output_dir, tokenizer, stop_token)
        mark_finished(output_dir, step)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    say(f"{Path(checkpoint).name} reached the end of the run but the final save did not finish; the model was saved "
        f"from it to {output_dir} (no step trained)")
    return {"steps": step, "finished_from": str(checkpoint), "output_dir": str(output_dir)}


def run_callbacks(recipe, tokenizer, eval_rows) -> tuple[list, object]:
    """(the callbacks a run trains with, its StopOnRequest). bench/step_overhead.py times these against none."""
    from sft.train.callbacks import training_callbacks
    from sft.train.preemption import MarkCompleteCheckpoints, StopOnRequest

    stop = StopOnRequest()  # SIGUSR1/SIGTERM (Slurm), Ctrl-C: checkpoint on all ranks at the same step, then exit
    # The stop first: DivergenceGuard then sees that the step saves, and checks it before the save.
    return [stop] + training_callbacks(recipe, tokenizer, eval_rows) + [MarkCompleteCheckpoints()], stop


def main(argv: list[str] | None = None) -> None:
    """`python sft/run.py RECIPE [--key value ...]`: the same run as `sft train`."""
    from sft.train.hardware import default_cuda_allocator

    default_cuda_allocator()  # before anything imports torch: every rank under accelerate launch starts here
    from sft.errors import EXIT_INTERRUPTED, EXIT_STOPPED, exit_on_user_error, take_debug_flag
    from sft.console import quiet_library_noise

    quiet_library_noise()
    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if argv else 2)
    from sft.recipe.command_line import split_command_line

    address, overrides = exit_on_user_error(split_command_line, argv)
    summary = exit_on_user_error(train, address, [a if a != "--fresh" else "--resume=false" for a in overrides])
    from sft.launch.status import exit_rank, report_end
    from sft.train.hardware import under_launcher, world_size

    code = 0
    if summary.get("interrupted"):
        # under sft launch the ranks exit 0 (torch-elastic then reports no failure) and the launcher exits 130
        if not report_end(EXIT_INTERRUPTED, failing=False):
            code = EXIT_INTERRUPTED
    elif summary.get("stopped"):
        # Stopped on request (SIGTERM, SIGUSR1, the stop file): checkpointed, not finished, so a supervisor must not
        # read it as success. Under sft launch the launcher exits with it; under a plain accelerate launch a rank's
        # non-zero exit would read as a crash, so the ranks exit 0 there.
        if not report_end(EXIT_STOPPED, failing=False) and not under_launcher():
            code = EXIT_STOPPED
    if world_size() > 1:
        exit_rank(code)  # every rank's part is saved and the process group is gone: no teardown to abort in
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
