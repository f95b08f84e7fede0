"""Recipe loading: keys are TRL's own, typos and wrong types fail with file:line, old names map to new ones."""

import os

import pytest
import yaml

from sft.errors import UserError
from sft.recipe.load import load_recipe
from sft.recipe.resolved import resolved_values, write_resolved
from sft.recipe.command_line import read_options
from tests.conftest import write_recipe


def recipe_file(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_keys_land_in_trl_dataclasses(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: some/model\nlearning_rate: 1e-4\nlora_r: 8\n"
                                 "dataset_name: data.jsonl\noutput_dir: out\nmethod: lora\n")
    recipe = load_recipe(path)
    assert recipe.training.learning_rate == 1e-4  # YAML reads 1e-4 as a string; it is coerced
    assert recipe.model.lora_r == 8 and recipe.model.use_peft is True
    assert recipe.model.lora_target_modules == "all-linear"
    assert recipe.script.dataset_name == "data.jsonl"
    assert recipe.training.bf16 is False  # no GPU here


def test_command_line_beats_recipe_beats_defaults(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\nlearning_rate: 1.0e-3\nmax_steps: 5\n")
    recipe = load_recipe(path, ["--learning_rate", "2e-5", "--packing", "--num_train_epochs=2"])
    assert recipe.training.learning_rate == 2e-5
    assert recipe.training.max_steps == 5
    assert recipe.training.packing is True
    assert recipe.training.num_train_epochs == 2.0
    assert recipe.training.weight_decay == 0.0  # default untouched


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\n\nlearning_rat: 1.0e-3\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:3: unknown key 'learning_rat'; did you mean 'learning_rate'?"


def test_unknown_override_names_option(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\n")
    with pytest.raises(UserError, match=r"command line: unknown key --max_step; did you mean 'max_steps'"):
        load_recipe(path, ["--max_step", "3"])


@pytest.mark.parametrize(
    "line, message",
    [
        ("learning_rate: fast", "'learning_rate' must be a number, got 'fast'"),
        ("packing: maybe", "'packing' must be true or false, got 'maybe'"),
        ("max_steps: 1.5", "'max_steps' must be an integer, got 1.5"),
        ("method: lora2", "'method' must be one of full, lora, qlora, freeze; got 'lora2'"),
        # Out of range: the libraries accept these and fail (or misbehave silently) mid-run.
        ("seed: -1", "seed must be a whole number from 0 to 4294967295 (numpy's seed range), got -1"),
        ("max_grad_norm: -1", "max_grad_norm must be 0 or more (0 turns clipping off; a negative norm would flip "
                              "the gradients), got -1.0"),
        ("save_total_limit: -3", "save_total_limit must be a whole number greater than 0 (or null to keep every "
                                 "checkpoint), got -3"),
        ("dataset_num_proc: 0", "dataset_num_proc must be a whole number greater than 0 (or null for one process), "
                                "got 0"),
        ("trainable_layers: -1\nmethod: freeze", "trainable_layers must be a whole number greater than 0, got -1"),
        ("max_dropped_fraction: 1.5", "max_dropped_fraction must be from 0 to 1, got 1.5"),
        ("sample_every_n_steps: 0", "sample_every_n_steps must be a whole number greater than 0, got 0"),
    ],
)
def test_wrong_type_or_range_names_key_and_line(tmp_path, line, message):
    path = recipe_file(tmp_path, f"model_name_or_path: m\n{line}\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:2: {message}"


def test_recipe_must_be_a_mapping(tmp_path):
    path = recipe_file(tmp_path, "- model_name_or_path: m\n")
    with pytest.raises(UserError, match="a recipe must be a mapping"):
        load_recipe(path)


def test_renamed_keys_map_to_todays_meaning_with_one_note_each(tmp_path):
    path = recipe_file(
        tmp_path,
        "model_name_or_path: m\nmax_seq_length: 128\ntorch_dtype: bfloat16\nwarmup_ratio: 0.1\n"
        "evaluation_strategy: steps\npacking_strategy: ffd\nuse_flash_attention_2: true\n"
        "overwrite_output_dir: true\n",
    )
    recipe = load_recipe(path)
    assert recipe.training.max_length == 128
    assert recipe.explicit["dtype"] == "bfloat16"  # what the recipe asks for; a CPU machine loads float32 instead
    assert recipe.training.warmup_steps == 0.1
    assert recipe.training.eval_strategy.value == "steps"
    assert recipe.training.packing_strategy == "bfd"
    assert recipe.explicit["attn_implementation"] == "flash_attention_2"
    assert recipe.model.attn_implementation == "sdpa"  # no GPU here: see tests/test_compat.py
    assert recipe.sft.resume is False  # overwrite_output_dir meant "start over"
    renames = [n for n in recipe.notes if "is now" in n]
    assert len(renames) == 7
    assert f"{path}:2: 'max_seq_length' is now 'max_length'; read as max_length: 128" in renames


def test_env_mapping_sets_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SFT_TEST_VARIABLE", raising=False)
    path = recipe_file(tmp_path, "model_name_or_path: m\nenv:\n  SFT_TEST_VARIABLE: 42\n")
    load_recipe(path)
    assert os.environ["SFT_TEST_VARIABLE"] == "42"


def test_trl_and_handbook_recipe_keys_are_accepted(tmp_path):
    # The shape of alignment-handbook's and `trl sft --config` recipes.
    path = recipe_file(tmp_path, """
model_name_or_path: Qwen/Qwen2.5-0.5B
model_revision: main
dtype: bfloat16
attn_implementation: sdpa
chat_template: "{% for m in messages %}{{ m['content'] }}{% endfor %}"
dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: train_sft
      columns: [messages]
      weight: 0.5
  test_split_size: 100
  seed: 0
dataset_num_proc: 2
datasets:
  - path: trl-lib/Capybara
    split: train
bf16: true
do_eval: true
eval_strategy: epoch
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: someone/model
learning_rate: 2.0e-05
log_level: info
logging_steps: 5
logging_strategy: steps
lr_scheduler_type: cosine
packing: false
max_length: 2048
max_steps: -1
num_train_epochs: 1
output_dir: data/out
per_device_eval_batch_size: 4
per_device_train_batch_size: 4
push_to_hub: false
report_to:
- tensorboard
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
use_peft: true
lora_r: 16
lora_alpha: 32
lora_target_modules: [q_proj, v_proj]
""")
    recipe = load_recipe(path)
    assert recipe.sft.dataset_mixture["datasets"][0]["weight"] == 0.5
    assert recipe.mixture.datasets[0].path == "trl-lib/Capybara"
    assert recipe.training.bf16 is False and any("no GPU" in n and "bf16" in n for n in recipe.notes)
    assert recipe.model.lora_target_modules == ["q_proj", "v_proj"]
    assert recipe.training.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_override_syntax_and_stray_values():
    assert read_options(["--a", "1", "--b=true", "--c", "--d", "x", "y", "--e-f", "1e-4"]) == {
        "a": ["1"], "b": ["true"], "c": [], "d": ["x", "y"], "e_f": ["1e-4"]}
    with pytest.raises(UserError, match="expected an option"):
        read_options(["stray"])
    with pytest.raises(UserError, match="expected an option"):
        read_options(["--a=1", "stray"])  # `--key=value` takes that one value


def test_resolved_recipe_reloads_to_the_same_values_without_secrets(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", learning_rate=3e-4, method="lora",
                        hub_token="hf_SECRET", output_dir=str(tmp_path / "out"))
    recipe = load_recipe(str(path))
    out = tmp_path / "resolved.yaml"
    write_resolved(recipe, out)
    text = out.read_text()
    assert "hf_SECRET" not in text and "hub_token" not in text
    data = yaml.safe_load(text)
    assert data["provenance"]["source"] == str(path) and "trl" in data["provenance"]["versions"]
    assert "bf16" not in data  # chosen for this machine, not by the recipe
    again = load_recipe(str(out))
    assert resolved_values(again) == resolved_values(recipe)


def test_resolved_recipe_asks_for_the_recipes_precision_not_this_machines(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model_name_or_path="m", bf16=True, dtype="bfloat16",
                        output_dir=str(tmp_path / "out"))
    recipe = load_recipe(str(path))
    assert recipe.model.dtype == "float32" and recipe.training.bf16 is False  # this machine has no GPU
    write_resolved(recipe, tmp_path / "resolved.yaml")
    data = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert data["bf16"] is True and data["dtype"] == "bfloat16"  # a GPU machine reruns it in bf16


def test_value_out_of_range_on_the_command_line(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\n")
    with pytest.raises(UserError) as err:
        load_recipe(path, ["--seed", "-1"])
    assert str(err.value).startswith("command line: seed must be a whole number from 0 to 4294967295")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_freeze_keys_without_method_freeze_are_refused(tmp_path, method):
    path = recipe_file(tmp_path, f"model_name_or_path: m\nmethod: {method}\ntrainable_layers: 2\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:3: trainable_layers set but method is {method}, which ")
    assert str(err.value).endswith("; set method: freeze, or remove it")


def test_freeze_regex_that_does_not_compile_names_the_key(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\nmethod: freeze\n\ntrainable_modules: ['lm_head', '(q_proj']\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:4: trainable_modules '(q_proj' is not a valid regular expression "
                                     "(missing ), unterminated subpattern at position 0)")


def test_library_refusal_names_the_key_it_is_about(tmp_path):
    path = recipe_file(tmp_path, "model_name_or_path: m\neval_strategy: steps\nsave_strategy: epoch\n\n"
                                 "load_best_model_at_end: true\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:5: invalid settings: ")
