"""What a run does while it trains, besides training: every metric to output_dir/metrics.jsonl (with perplexity
and tokens per second), early stopping, generation samples every K steps, and a stop on a loss that is no longer
finite before the broken weights can be saved. `training_callbacks(recipe, ...)` builds them for SFTTrainer."""

import json
import math
import sys
import time
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback

from sft.errors import UserError
from sft.console import is_main_process

DIVERGENCE_CAUSES = (
    "this usually means the learning rate is too high (lower it or add warmup), fp16 overflow (use bf16, or a "
    "lower learning rate), or bad data (empty, garbage or extremely long examples)"
)


class TrainingDiverged(UserError):
    """Loss or gradients became NaN or infinite; the message says where, why it happens, and what was kept."""


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")  # exp overflows a float past ~709


class MetricsFile(TrainerCallback):
    """Every log line (train and eval) to output_dir/metrics.jsonl, whatever report_to says, with training tokens
    per second. Adds eval_perplexity to the eval logs, so the trackers that run after it (see trackers_last) log
    it too, and to the eval metrics, so metric_for_best_model: eval_perplexity works."""

    def __init__(self, output_dir):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.last = None  # (time, tokens) at the previous train log

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {} if logs is None else logs
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])  # the same dict reaches the later callbacks
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
        tokens = logs.get("num_tokens", state.num_input_tokens_seen or None)
        if "loss" in logs and tokens:
            now = time.time()
            if self.last is not None and now > self.last[0] and tokens > self.last[1]:
                record["tokens_per_second"] = (tokens - self.last[1]) / (now - self.last[0])
            self.last = (now, tokens)
        record["time"] = time.time()
        if is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.time(), state.num_input_tokens_seen or 0) if state.num_input_tokens_seen else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None and "eval_loss" in metrics:
            metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])


def trackers_last(trainer) -> None:
    """Move the trackers' callbacks (report_to) after the ones the Trainer was given, and hand them to the samples
    callback. The Trainer puts them first, so they would log each line before MetricsFile adds eval_perplexity to
    it; after ours, a tracker also closes its run only once the last samples are in. Only public Trainer methods."""
    from transformers.integrations import get_reporting_integration_callbacks

    trackers = []
    for tracker in get_reporting_integration_callbacks(trainer.args.report_to):
        callback = trainer.pop_callback(tracker)
        if callback is not None:
            trainer.add_callback(callback)
            trackers.append(callback)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, GenerationSamples):
            callback.trackers = trackers


class DivergenceGuard(TrainerCallback):
    """Stop on a non-finite gradient norm or loss before the broken weights can be saved.

    Checked on what the Trainer already computed and logged: the gradient norm (before clipping) and the loss of
    each logging step, so it adds no device sync to the other steps. (A non-finite gradient breaks the weights for
    good, so every later logged gradient norm shows it.) A step that saves, evaluates or ends the run is also
    logged, and the Trainer logs before it saves, so no checkpoint and no final model holds the broken state. Both
    values are the same on every rank (the loss is gathered, the norm is global), so all ranks stop together. Under
    fp16 the grad scaler skips overflowing steps by design, so there only the loss counts."""

    def __init__(self, output_dir):
        self.output_dir = Path(output_dir)

    def stop(self, step: int, what: str):
        from sft.train.checkpoints import complete_checkpoints

        kept = complete_checkpoints(self.output_dir)
        where = (f"the last good checkpoint, {kept[-1]}, is kept; resume from it with a lower learning_rate"
                 if kept else "no checkpoint had been saved yet; nothing broken was saved")
        raise TrainingDiverged(f"step {step}: {what} is not finite; {DIVERGENCE_CAUSES}. Stopped before saving: "
                               f"{where}")

    @staticmethod
    def log_before_keeping(control):
        """Anything that keeps or judges the weights at this step (a save, an evaluation, the end) gets the step's
        values logged, and so checked, first."""
        if control.should_save or control.should_evaluate or control.should_training_stop:
            control.should_log = True

    def on_step_end(self, args, state, control, **kwargs):
        self.log_before_keeping(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.log_before_keeping(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        grad_norm, loss = logs.get("grad_norm"), logs.get("loss")
        broken = None
        if not args.fp16 and isinstance(grad_norm, (int, float)) and not math.isfinite(grad_norm):
            broken = "the gradient"
        elif isinstance(loss, (int, float)) and not math.isfinite(loss):
            broken = "the training loss"
        if broken:
            if not args.disable_tqdm and state.is_local_process_zero:
                print(file=sys.stderr)  # end the progress bar's line, so the error is a line of its own
            self.stop(state.global_step, broken)


class GenerationSamples(TrainerCallback):
    """Every K steps, answer a fixed list of prompts with the training template; write the answers to
    output_dir/samples.jsonl and to the trackers report_to names (their callbacks, given by trackers_last)."""

    def __init__(self, prompts: list[str], texts: list[str], every: int, max_new_tokens: int, output_dir,
                 generation_config=None):
        self.prompts, self.texts, self.every, self.max_new_tokens = prompts, texts, every, max_new_tokens
        self.generation_config = generation_config
        self.path = Path(output_dir) / "samples.jsonl"
        self.trackers = []  # transformers' tracker callbacks of this run
        self.done_step = None

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0:
            self.sample(state.global_step, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.done_step != state.global_step and state.global_step > 0:
            self.sample(state.global_step, model, processing_class)

    def sample(self, step: int, model, tokenizer):
        from sft.after_training.generation import generate

        self.done_step = step
        was_training = model.training
        model.eval()
        try:
            # Every rank generates (ZeRO-3 needs all ranks for each forward); only the main process writes.
            answers = generate(model, tokenizer, self.texts, self.generation_config,
                               max_new_tokens=self.max_new_tokens, do_sample=False)
        finally:
            model.train(was_training)
        if not is_main_process():
            return
        rows = [{"step": step, "prompt": p, "completion": a} for p, a in zip(self.prompts, answers)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        log_samples_to_trackers(rows, step, self.trackers)


def log_samples_to_trackers(rows: list[dict], step: int, trackers: list) -> None:
    """Samples into the same run as the metrics, on the same axis: the training step. wandb and trackio count their
    own step, one per log call, and transformers logs the training step beside each line as train/global_step
    (wandb's charts use it as their x axis); samples are logged the same way. Giving them step= instead would put
    them on the other axis, and wandb drops any step lower than its counter."""
    from transformers.integrations import TensorBoardCallback, TrackioCallback, WandbCallback

    columns = ["step", "prompt", "completion"]
    table_rows = [[r["step"], r["prompt"], r["completion"]] for r in rows]
    for tracker in trackers:
        if isinstance(tracker, TensorBoardCallback) and tracker.tb_writer is not None:
            text = "\n\n".join(f"**{r['prompt']}**\n\n{r['completion']}" for r in rows)
            tracker.tb_writer.add_text("samples", text, step)  # the writer of the metrics' run
            tracker.tb_writer.flush()
        elif isinstance(tracker, WandbCallback):
            import wandb

            if wandb.run is not None:
                wandb.run.log({"samples": wandb.Table(columns=columns, data=table_rows), "train/global_step": step})
        elif isinstance(tracker, TrackioCallback):
            import trackio

            trackio.log({"samples": trackio.Table(columns=columns, data=table_rows), "train/global_step": step})


def sample_prompts(recipe, tokenizer, eval_rows) -> tuple[list[str], list[str]]:
    """(prompts as shown, texts as the model sees them): the recipe's sample_prompts, else the first eval rows."""
    from sft.after_training.generation import prompt_and_reference, prompt_text, render_prompt

    wanted = recipe.sft.sample_prompts
    if wanted:
        return list(wanted), [render_prompt(tokenizer, p, recipe.sft.instruction_template) for p in wanted]
    if eval_rows is None or len(eval_rows) == 0:
        raise UserError(f"{recipe.source}: sample_every_n_steps needs prompts: set sample_prompts (a list of user "
                        "messages) or give the run an eval split")
    prompts, texts = [], []
    for row in eval_rows.select(range(min(recipe.sft.sample_count, len(eval_rows)))):
        prompt, _ = prompt_and_reference(row)
        prompts.append(prompt if isinstance(prompt, str) else prompt[-1].get("content", ""))
        texts.append(prompt_text(tokenizer, prompt))
    return prompts, texts


def check_early_stopping(recipe) -> None:
    """early_stopping_patience needs evaluations (its metric is filled by sft/recipe/finalize.py)."""
    args = recipe.training
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "no":
        raise UserError(f"{recipe.source}: early_stopping_patience needs evaluations: set eval_strategy (steps or "
                        "epoch) and give the run an eval split")


def training_callbacks(recipe, tokenizer, eval_rows=None) -> list:
    """The callbacks a run gets from its recipe. Raises UserError for settings that cannot work."""
    output_dir = recipe.training.output_dir
    callbacks = [MetricsFile(output_dir), DivergenceGuard(output_dir)]
    strategy = str(getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy))
    if strategy != "no" and eval_rows is None:
        raise UserError(f"{recipe.source}: eval_strategy is {strategy} but the run has no eval split; add eval data "
                        "(e.g. test_split_size: 0.1) or set eval_strategy: 'no'")
    if recipe.sft.early_stopping_patience:
        check_early_stopping(recipe)
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.sft.early_stopping_patience,
                                               early_stopping_threshold=recipe.sft.early_stopping_threshold))
    if recipe.sft.sample_every_n_steps:
        from transformers import GenerationConfig

        from sft.masks.plan import generation_stop_tokens
        from sft.masks.spans import end_of_turn_token

        prompts, texts = sample_prompts(recipe, tokenizer, eval_rows)
        # stop where the trained turn ends, as the saved model will
        stops = generation_stop_tokens(recipe.model.model_name_or_path, tokenizer)
        stop = end_of_turn_token(tokenizer, stop_tokens=stops)
        stop_config = GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids(stop)] if stop else None,
                                       pad_token_id=tokenizer.pad_token_id)
        callbacks.append(GenerationSamples(prompts, texts, recipe.sft.sample_every_n_steps,
                                           recipe.sft.sample_max_new_tokens, output_dir, stop_config))
    return callbacks
