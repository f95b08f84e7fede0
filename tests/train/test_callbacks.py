"""What a run does while training: metrics.jsonl, generation samples, the stop on a non-finite loss, early
stopping settings. Real `sft train` runs on the tiny model."""

import json
import math

import pytest

from tests.conftest import REPO, SAMPLE_PROMPTS, quickstart_rows, run_cli, write_recipe


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_metrics_file_has_every_logged_step(lora_run):
    records = read_jsonl(lora_run / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    # logging_steps 2, max_steps 6, and step 3 because it saves: a step that saves is logged (and so checked) first
    assert [r["step"] for r in train] == [2, 3, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] > 0 and r["grad_norm"] >= 0 for r in train)
    assert all(r["tokens_per_second"] > 0 for r in train[1:])  # a rate needs a previous log line
    assert records[-1]["step"] == 6 and "train_loss" in records[-1]


def test_samples_every_k_steps_with_the_training_template(lora_run):
    samples = read_jsonl(lora_run / "samples.jsonl")
    assert [(s["step"], s["prompt"]) for s in samples] == [(3, p) for p in SAMPLE_PROMPTS] + [
        (6, p) for p in SAMPLE_PROMPTS]
    # The step-6 samples are what the saved model answers: same template, same stop token, greedy.
    out = run_cli("generate", lora_run, *[a for p in SAMPLE_PROMPTS for a in ("--prompt", p)],
                  "--max-new-tokens", 8, check=True)
    generated = [json.loads(line)["completion"] for line in out.stdout.splitlines()]
    assert generated == [s["completion"] for s in samples if s["step"] == 6]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    quickstart_rows(tmp_path / "train.jsonl", 32)
    out_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(out_dir), method="full",
                          max_length=64, max_steps=4, per_device_train_batch_size=8, learning_rate=1.0e30,
                          logging_steps=1, save_steps=1, report_to="none")
    proc = run_cli("train", recipe)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "step 2: the gradient is not finite" in error[0]
    assert "learning rate is too high" in error[0] and "fp16 overflow" in error[0] and "bad data" in error[0]
    assert f"{out_dir}/checkpoint-1, is kept" in error[0]
    # The broken step-2 state was never written: no checkpoint-2 and no final model over the good one.
    assert sorted(p.name for p in out_dir.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out_dir / "model.safetensors").exists()
    weights = load_file(out_dir / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


# The guard reads the gradient norm and loss the Trainer logs, so it adds no device sync to the other steps. A
# broken step is found at the next logged step; a step that saves or ends the run is always logged, so it is
# checked before anything is written. (lr 1e30: step 1's gradient is finite, it breaks the weights, step 2's is not.)
@pytest.mark.parametrize("case, settings, found_at", [
    ("at the next logging step", {"logging_steps": 3, "save_strategy": "no", "max_steps": 8}, 3),
    ("before a save between logging steps", {"logging_steps": 100, "save_steps": 2, "max_steps": 8}, 2),
    ("before the final model is saved", {"logging_steps": 100, "save_strategy": "no", "max_steps": 2}, 2),
])
def test_nan_is_found_on_logged_values_before_any_save(case, settings, found_at, tiny_model, tmp_path):
    quickstart_rows(tmp_path / "train.jsonl", 32)
    out_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(out_dir), method="full",
                          max_length=64, per_device_train_batch_size=8, learning_rate=1.0e30, report_to="none",
                          **settings)
    proc = run_cli("train", recipe)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr, case
    assert error[0].startswith(f"error: step {found_at}: the gradient is not finite; this usually means"), case
    assert error[0].endswith("Stopped before saving: no checkpoint had been saved yet; nothing broken was saved")
    assert not list(out_dir.glob("checkpoint-*")) and not (out_dir / "model.safetensors").exists()
    logged = [r for r in read_jsonl(out_dir / "metrics.jsonl") if "loss" in r]
    assert logged[-1]["step"] == found_at and not math.isfinite(logged[-1]["grad_norm"])


def test_early_stopping_and_samples_need_what_they_use(tiny_model, tmp_path):
    from sft.train.callbacks import training_callbacks
    from sft.errors import UserError
    from sft.recipe.load import load_recipe

    base = {"model_name_or_path": str(tiny_model), "dataset_name": str(REPO / "recipes/data/uppercase_heldout.jsonl"),
            "output_dir": str(tmp_path / "run"), "report_to": "none"}
    recipe = load_recipe(str(write_recipe(tmp_path / "a.yaml", **base, early_stopping_patience=2)))
    with pytest.raises(UserError, match=r"a.yaml: early_stopping_patience needs evaluations: set eval_strategy "
                                        r"\(steps or epoch\) and give the run an eval split$"):
        training_callbacks(recipe, tokenizer=None)
    recipe = load_recipe(str(write_recipe(tmp_path / "b.yaml", **base, sample_every_n_steps=5)))
    with pytest.raises(UserError, match=r"b.yaml: sample_every_n_steps needs prompts: set sample_prompts"):
        training_callbacks(recipe, tokenizer=None)
    recipe = load_recipe(str(write_recipe(tmp_path / "c.yaml", **base, eval_strategy="steps")))
    with pytest.raises(UserError, match=r"c.yaml: eval_strategy is steps but the run has no eval split"):
        training_callbacks(recipe, tokenizer=None)


def test_eval_perplexity_early_stopping_and_best_model(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    quickstart_rows(tmp_path / "train.jsonl", 40)
    out_dir = tmp_path / "run"
    # A threshold no change can beat: every evaluation after the first counts as "no improvement", so with
    # patience 2 the run must stop after its third evaluation (step 3), not at max_steps 20.
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(out_dir), method="lora",
                          max_length=64, max_steps=20, per_device_train_batch_size=8, learning_rate=1.0e-2,
                          test_split_size=8, eval_strategy="steps", eval_steps=1, save_steps=1, logging_steps=1,
                          load_best_model_at_end=True, metric_for_best_model="eval_perplexity",
                          early_stopping_patience=2, early_stopping_threshold=100.0, report_to="tensorboard")
    run_cli("train", recipe, check=True)
    records = read_jsonl(out_dir / "metrics.jsonl")
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert all(r["eval_perplexity"] == math.exp(r["eval_loss"]) for r in evals)
    # The tracker got eval perplexity too (transformers' TensorBoardCallback names it eval/perplexity).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [scalars_dir] = list((out_dir / "runs").iterdir())
    scalars = EventAccumulator(str(scalars_dir))
    scalars.Reload()
    logged = [(e.step, e.value) for e in scalars.Scalars("eval/perplexity")]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert [value for _, value in logged] == pytest.approx([r["eval_perplexity"] for r in evals], rel=1e-6)
    state = json.loads((out_dir / "checkpoint-3" / "trainer_state.json").read_text())
    # Lower perplexity is better (transformers would assume higher for a name not ending in "loss").
    best = min(evals, key=lambda r: r["eval_perplexity"])
    assert state["global_step"] == 3 and state["best_metric"] == best["eval_perplexity"]
    assert state["best_model_checkpoint"] == str(out_dir / f"checkpoint-{best['step']}")
    # load_best_model_at_end: the saved adapter is the best checkpoint's.
    final = load_file(out_dir / "adapter_model.safetensors")
    kept = load_file(out_dir / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in kept)
    # `sft eval RUN` finds the run's own eval split and scores the saved (best) adapter as the trainer did.
    result = json.loads(run_cli("eval", out_dir, "--metrics", "perplexity", "--json", check=True).stdout)
    assert result["rows"] == 8 and result["perplexity"] == pytest.approx(best["eval_perplexity"], rel=1e-4)


def test_samples_and_metrics_reach_the_tracker(lora_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run_dir] = list((lora_run / "runs").iterdir())  # samples in the run of transformers' TensorBoardCallback
    events = EventAccumulator(str(run_dir))
    events.Reload()
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors("samples/text_summary")]
    assert [step for step, _ in texts] == [3, 6]
    assert all(all(f"**{p}**" in text for p in SAMPLE_PROMPTS) for _, text in texts)
    # logging_steps 2, plus step 3: a step that saves is logged too, so divergence is checked before any save
    assert [e.step for e in events.Scalars("train/loss")] == [2, 3, 4, 6]
