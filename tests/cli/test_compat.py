"""Recipes and command lines users bring from TRL and alignment-handbook run unchanged: inline chat templates of any
length, overrides typed by their field, TRL's `--config` and flags-only forms and its launch keys, requests this
machine cannot honour, and `--help-all`."""

import json
from pathlib import Path

import pytest
import yaml

from sft.capabilities import Fallback, Machine, decide
from sft.errors import UserError
from sft.recipe.coercion import resolve_path
from sft.recipe.load import load_recipe
from sft.recipe.command_line import split_command_line
from tests.conftest import CPU_OUTCOME, REPO, run_cli, write_recipe
from tests.support.assertions import assert_one_line_error, assert_untouched

# A Zephyr-style template of the length alignment-handbook recipes carry inline: comments, both kinds of quotes,
# whitespace control, a default system turn, a tool role and an error for unknown roles.
ZEPHYR_STYLE = """{#- Zephyr-style chat template, written for sft's tests.
    Every turn is a role header on its own line, then the message, then the end-of-sequence token and a newline:
        <|system|>
        You are a helpful assistant.</s>
        <|user|>
        What is the capital of France?</s>
        <|assistant|>
        Paris.</s>
    The system turn is optional; without one the default below is used, so that a model trained with this template
    always sees a system turn first. Tool results are rendered as their own turn with the <|tool|> header. User
    messages are trimmed ("  hi  " is rendered as "hi"); assistant messages are rendered exactly as written, since
    those are the tokens the model is trained to produce. add_generation_prompt opens an assistant turn. -#}
{%- set default_system = "You are a helpful assistant. Answer the user's questions \\"accurately\\" and briefly." -%}
{%- if messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = default_system -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- '<|system|>\\n' + system_message -}}
{%- if tools -%}
    {{- '\\n\\nYou can call these functions. To call one, answer with <tool_call>{"name": ..., "arguments": ...}'
        '</tool_call>:\\n' -}}
    {%- for tool in tools -%}
        {{- (tool['function'] if tool['function'] is defined else tool) | tojson + '\\n' -}}
    {%- endfor -%}
{%- endif -%}
{{- eos_token + '\\n' -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<|user|>\\n' + message['content'] | trim + eos_token + '\\n' -}}
    {%- elif message['role'] == 'assistant' -%}
        {#- The assistant's own words: trained, and closed by eos_token so that generation learns to stop. -#}
        {{- '<|assistant|>\\n' + (message['content'] or '') -}}
        {%- for call in message['tool_calls'] or [] -%}
            {{- '\\n<tool_call>{"name": "' + call['function']['name'] + '", "arguments": '
                + call['function']['arguments'] | tojson + '}</tool_call>' -}}
        {%- endfor -%}
        {{- eos_token + '\\n' -}}
    {%- elif message['role'] == 'tool' -%}
        {{- '<|tool|>\\n' + message['content'] + eos_token + '\\n' -}}
    {%- else -%}
        {{- raise_exception("Unknown role '" ~ message['role'] ~ "': use system, user, assistant or tool") -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\\n' -}}
{%- endif -%}
"""
# Longer than PATH_MAX (4096) as well as NAME_MAX (255): both made os.stat raise before.
LONG_TEMPLATE = ZEPHYR_STYLE + "{#- " + "Notes on the format, kept with the template. " * 60 + "-#}"


def test_templates_are_realistic_lengths():
    assert 2000 < len(ZEPHYR_STYLE) < 4000 and len(LONG_TEMPLATE) > 4096


@pytest.mark.parametrize("template", [ZEPHYR_STYLE, LONG_TEMPLATE], ids=["3k", "6k"])
@pytest.mark.parametrize("style", ["double-quoted", "block"])
def test_inline_template_of_any_length_is_read_as_jinja(tmp_path, template, style):
    # alignment-handbook writes templates as one double-quoted line with \n escapes; others use a block scalar.
    block = ("|\n" if template.endswith("\n") else "|-\n") + "".join(
        f"  {line}\n" if line else "\n" for line in template.removesuffix("\n").split("\n"))
    value = json.dumps(template) if style == "double-quoted" else block
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model_name_or_path: m\nchat_template: {value}\n")
    recipe = load_recipe(str(path))
    assert recipe.sft.chat_template == template


def test_resolve_path_never_raises_on_long_strings(tmp_path):
    assert resolve_path(LONG_TEMPLATE, tmp_path) == LONG_TEMPLATE
    not_jinja = "x" * 5000  # too long for a file name, and no Jinja: left to its consumer to reject
    assert resolve_path(not_jinja, tmp_path) == not_jinja
    (tmp_path / "chat.jinja").write_text("{{ x }}")
    assert resolve_path("chat.jinja", tmp_path) == str(tmp_path / "chat.jinja")


def chat_data(path: Path, rows: int = 40) -> Path:
    lines = (REPO / "recipes" / "data" / "uppercase_chat_train.jsonl").read_text().splitlines()[:rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# alignment-handbook's recipes/zephyr-7b-beta/sft/config_full.yaml and smollm's, key for key; only the model, the data
# and the output folder are ours. The old names (torch_dtype, max_seq_length, overwrite_output_dir, warmup_ratio) are
# as published.
HANDBOOK_RECIPE = """\
# Model arguments
model_name_or_path: {model}
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2

# Data training arguments
chat_template: {template}
dataset_mixture:
  datasets:
    - id: {data}
      config: default
      split: train
      columns:
        - messages
      weight: 1.0
  test_split_size: 4
  seed: 0
dataset_num_proc: 2

# SFT trainer config
bf16: true
dataset_kwargs:
  add_special_tokens: false  # We already wrap <bos> and <eos> in the chat template
  append_concat_token: false # No need to add <eos> across samples
do_eval: true
eval_strategy: epoch
gradient_accumulation_steps: 2
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: zephyr-7b-sft-full
hub_strategy: every_save
learning_rate: 2.0e-05
log_level: info
logging_steps: 5
logging_strategy: steps
lr_scheduler_type: cosine
max_seq_length: 2048
max_steps: -1
num_train_epochs: 1
output_dir: {out}
overwrite_output_dir: true
per_device_eval_batch_size: 8
per_device_train_batch_size: 4
push_to_hub: true
remove_unused_columns: true
report_to:
- tensorboard
save_strategy: "no"
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""


NO_TOKEN = {"HF_TOKEN": "", "HF_TOKEN_PATH": "/nonexistent/sft-test-token"}


@pytest.mark.slow
def test_published_handbook_recipe_checks_and_trains_unchanged(tmp_path, tiny_model):
    out = tmp_path / "out"
    recipe = tmp_path / "config_full.yaml"
    recipe.write_text(HANDBOOK_RECIPE.format(model=tiny_model, data=chat_data(tmp_path / "train.jsonl"), out=out,
                                             template=json.dumps(LONG_TEMPLATE)))
    # The push to the Hub needs a token, which `sft check` asks for as `sft train` does.
    assert "push_to_hub is true but no Hub token was found" in run_cli("check", recipe, env=NO_TOKEN).stderr
    check = run_cli("check", recipe, "--push_to_hub", "false")
    assert check.returncode == 0, check.stderr
    assert "note: attn_implementation flash_attention_2 needs a GPU: using sdpa on this CPU machine" in check.stdout
    assert "OK: the run would start." in check.stdout
    # Only what a CPU test cannot do is overridden: a full epoch, and the push to the Hub.
    proc = run_cli("train", recipe, "--max_steps", "2", "--push_to_hub", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert (out / "chat_template.jinja").read_text() == LONG_TEMPLATE  # reached the tokenizer byte for byte
    assert not list(out.glob("checkpoint-*"))  # save_strategy "no"
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # report_to tensorboard
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    # The resolved recipe asks for what the recipe asked for, so a GPU machine reruns it with flash attention.
    assert resolved["attn_implementation"] == "flash_attention_2" and resolved["bf16"] is True
    assert resolved["max_length"] == 2048 and resolved["save_strategy"] == "no"


# TRL's examples/cli_configs/example_config.yaml, as published, with a local model and dataset.
TRL_EXAMPLE = """\
# This is an example configuration file of TRL CLI, you can use it for
# SFT like that: `trl sft --config config.yaml --output_dir test-sft`
# The YAML file supports environment variables by adding an `env` field
# as below

# env:
#   CUDA_VISIBLE_DEVICES: 0

model_name_or_path:
  {model}
dataset_name:
  {data}
report_to:
  none
learning_rate:
  0.0001
lr_scheduler_type:
  cosine
"""


def text_data(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": f"review {i}: a fine film, {'good ' * (i % 5)}"}) + "\n"
                            for i in range(16)))
    return path


@pytest.mark.slow
def test_trl_example_config_runs_with_config_flag_and_typed_overrides(tmp_path, tiny_model):
    config = tmp_path / "config.yaml"
    config.write_text(TRL_EXAMPLE.format(model=tiny_model, data=text_data(tmp_path / "imdb.jsonl")))
    out = tmp_path / "test-sft"
    # `--eval_strategy no --save_strategy no` were the boolean False (YAML 1.1) and failed.
    proc = run_cli("train", "--config", config, "--output_dir", out, "--max_steps", "2", "--eval_strategy", "no",
                   "--save_strategy", "no", "--per_device_train_batch_size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and not list(out.glob("checkpoint-*"))
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["learning_rate"] == 0.0001 and resolved["lr_scheduler_type"] == "cosine"
    assert resolved["save_strategy"] == "no" and resolved["eval_strategy"] == "no"


@pytest.mark.slow
def test_a_run_given_by_flags_alone(tmp_path, tiny_model):
    out = tmp_path / "out"
    proc = run_cli("train", "--model_name_or_path", tiny_model, "--dataset_name", text_data(tmp_path / "d.jsonl"),
                   "--output_dir", out, "--max_steps", "1", "--report_to", "none", "--save_strategy", "no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["provenance"]["source"] == "command line"


def test_flags_alone_without_a_model_is_one_line(tmp_path, existing_output):
    proc = run_cli("train", "--dataset_name", "d.jsonl", "--output_dir", existing_output)
    assert_one_line_error(proc, "command line: missing key 'model_name_or_path'")
    assert_untouched(existing_output)


# ---------------------------------------------------------------------------------------------------------------
# The command line's shapes


@pytest.mark.parametrize("args, expected", [
    (["r.yaml", "--lr", "1"], ("r.yaml", ["--lr", "1"])),
    (["--config", "r.yaml", "--lr", "1"], ("r.yaml", ["--lr", "1"])),
    (["--lr", "1", "--config=r.yaml"], ("r.yaml", ["--lr", "1"])),
    (["--model_name_or_path", "m", "--packing"], (None, ["--model_name_or_path", "m", "--packing"])),
])
def test_recipe_is_positional_or_config_or_absent(args, expected):
    assert split_command_line(args) == expected


@pytest.mark.parametrize("args, message", [
    (["a.yaml", "--config", "b.yaml"], "two recipes given (a.yaml and --config b.yaml); give one"),
    (["--config"], "--config needs a recipe file, as in --config recipe.yaml"),
    (["--config", "--max_steps", "1"], "--config needs a recipe file, as in --config recipe.yaml"),
])
def test_config_flag_misuse(args, message):
    with pytest.raises(UserError) as err:
        split_command_line(args)
    assert str(err.value) == message


@pytest.mark.parametrize("args, message", [
    ((), "error: give a recipe (sft train RECIPE, or --config RECIPE) or every key as a flag"),
    (("a.yaml", "--config", "b.yaml"), "error: two recipes given (a.yaml and --config b.yaml); give one"),
])
def test_train_without_one_recipe_is_one_line(args, message):
    proc = run_cli("train", *args)
    assert_one_line_error(proc, message)


# ---------------------------------------------------------------------------------------------------------------
# Values typed by their field, as HfArgumentParser types them


def plain_recipe(tmp_path, text: str = "") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text("model_name_or_path: m\n" + text)
    return str(path)


def test_overrides_are_typed_by_their_field(tmp_path):
    recipe = load_recipe(plain_recipe(tmp_path), [
        "--eval_strategy", "no", "--save_strategy=no", "--hub_strategy", "end", "--packing", "--use_peft", "yes",
        "--gradient_checkpointing", "off", "--lora_target_modules", "q_proj", "v_proj", "--report_to", "none",
        "--learning_rate", "1e-4", "--max_steps", "-1", "--num_train_epochs", "2", "--dataset_name", "no",
        "--chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        "--gradient_checkpointing_kwargs", '{"use_reentrant": false}', "--max_length", "None"])
    t, m = recipe.training, recipe.model
    assert (t.eval_strategy.value, t.save_strategy.value, t.hub_strategy.value) == ("no", "no", "end")
    assert t.packing is True and m.use_peft is True and t.gradient_checkpointing is False
    assert m.lora_target_modules == ["q_proj", "v_proj"] and t.report_to == []
    assert t.learning_rate == 1e-4 and t.max_steps == -1 and t.num_train_epochs == 2.0
    assert recipe.script.dataset_name == "no"  # a string field keeps what was typed
    assert recipe.sft.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert t.gradient_checkpointing_kwargs == {"use_reentrant": False} and t.max_length is None


def test_booleans_for_boolean_fields_still_work(tmp_path):
    recipe = load_recipe(plain_recipe(tmp_path, "packing: true\n"), ["--packing", "false", "--bf16", "false",
                                                                    "--do_eval", "on"])
    assert recipe.training.packing is False and recipe.explicit["bf16"] is False
    assert recipe.training.do_eval is True


def test_yaml_11_words_given_to_text_fields_in_a_recipe_file(tmp_path):
    recipe = load_recipe(plain_recipe(tmp_path, "eval_strategy: no\nsave_strategy: no\nhub_model_id: yes\n"
                                                "packing: yes\ngradient_checkpointing: off\n"))
    assert recipe.training.eval_strategy.value == "no" and recipe.training.save_strategy.value == "no"
    assert recipe.training.hub_model_id == "yes"
    assert recipe.training.packing is True and recipe.training.gradient_checkpointing is False


@pytest.mark.parametrize("args, message", [
    (["--learning_rate"], "command line: --learning_rate needs a value, as in --learning_rate VALUE"),
    (["--max_steps", "1", "2"], "command line: --max_steps takes one value, got 2: 1 2"),
    (["--packing", "maybe"], "command line: --packing must be true or false, got 'maybe'"),
    (["--eval_strategy", "never"], "command line: --eval_strategy must be one of no, steps, epoch, got 'never'"),
])
def test_override_errors_name_the_option(tmp_path, args, message):
    with pytest.raises(UserError) as err:
        load_recipe(plain_recipe(tmp_path), args)
    assert str(err.value) == message


def test_an_option_without_its_value_is_one_line_and_touches_nothing(tmp_path, tiny_model, existing_output):
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), output_dir=str(existing_output),
                          dataset_name=str(text_data(tmp_path / "d.jsonl")))
    proc = run_cli("train", recipe, "--max_steps", "1", "--learning_rate")
    assert_one_line_error(proc, "error: command line: --learning_rate needs a value, as in --learning_rate VALUE")
    assert_untouched(existing_output)


def test_older_handbook_worker_count_reads_as_dataset_num_proc(tmp_path):
    path = plain_recipe(tmp_path, "preprocessing_num_workers: 12\n")
    recipe = load_recipe(path)
    assert recipe.training.dataset_num_proc == 12
    assert f"{path}:2: 'preprocessing_num_workers' is now 'dataset_num_proc'; read as dataset_num_proc: 12" \
        in recipe.notes


def test_a_word_that_is_no_strategy_names_file_and_line(tmp_path):
    path = plain_recipe(tmp_path, "save_strategy: off\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:2: 'save_strategy' must be one of no, steps, epoch, best, got 'off'"


def test_eval_strategy_no_on_the_command_line_is_not_an_error(tmp_path, tiny_model, existing_output):
    # The failing command, end to end up to the data check: exit 0 where it was exit 2.
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), output_dir=str(existing_output),
                          dataset_name=str(text_data(tmp_path / "d.jsonl")))
    proc = run_cli("check", recipe, "--eval_strategy", "no", "--save_strategy", "no")
    assert proc.returncode == 0, proc.stderr
    assert_untouched(existing_output)


# ---------------------------------------------------------------------------------------------------------------
# TRL's launch keys


def test_trl_launch_keys_are_recipe_keys_and_unknown_profiles_are_one_line(tmp_path):
    recipe = load_recipe(plain_recipe(tmp_path, "accelerate_config: zero2\nnum_processes: 4\n"))
    assert recipe.sft.accelerate_config == "zero2" and recipe.sft.num_processes == 4
    path = plain_recipe(tmp_path, "accelerate_config: fsdp1\n")  # TRL ships fsdp1; sft has FSDP2 only
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == (f"{path}:2: 'accelerate_config' must be one of auto, single_gpu, multi_gpu, zero1, "
                              "zero2, zero3, zero3_qlora, zero3_offload, fsdp2, fsdp2_qlora; got 'fsdp1'")


@pytest.mark.slow
@CPU_OUTCOME
def test_sft_launch_takes_profile_and_processes_from_the_recipe(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), dataset_name="d.jsonl",
                          output_dir=str(tmp_path / "out"), accelerate_config="zero2", num_processes=2)
    proc = run_cli("launch", "--config", recipe, "--dry-run", "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "sft: profile zero2 (as asked), 2 CPU processes" in proc.stderr
    assert f"--num_processes 2 --deepspeed_config_file {REPO}/deepspeed_configs/zero2.json {REPO}/sft/run.py " \
           f"{recipe} --max_steps 2" in proc.stderr
    # Options given to sft launch win over the recipe's keys.
    proc = run_cli("launch", recipe, "--profile", "multi_gpu", "--num-processes", "3", "--dry-run")
    assert "sft: profile multi_gpu (as asked), 3 CPU processes" in proc.stderr, proc.stderr


@pytest.mark.slow
@CPU_OUTCOME
def test_sft_train_with_num_processes_runs_under_sft_launch(tmp_path, tiny_model):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), output_dir=str(out),
                          dataset_name=str(text_data(tmp_path / "d.jsonl")), num_processes=2, max_steps=2,
                          per_device_train_batch_size=2, report_to="none", save_strategy="no")
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sft: profile multi_gpu (cheapest that fits:" in proc.stderr and "2 CPU processes" in proc.stderr
    assert "2 processes over gloo" in proc.stderr  # the child processes trained together
    assert (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Requests this machine cannot honour


GPU = Machine(on_gpu=True, installed=frozenset())
CPU = Machine(on_gpu=False, installed=frozenset({"tensorboard"}))


@pytest.mark.parametrize("values, message", [
    ({"attn_implementation": "flash_attention_2"},
     "attn_implementation flash_attention_2 needs flash_attn, which is not installed: pip install flash-attn "
     "--no-build-isolation (or pip install kernels), or set attn_implementation: sdpa"),
    ({"attn_implementation": "kernels-community/flash-attn2"},
     "attn_implementation kernels-community/flash-attn2 loads a Hub kernel and needs the kernels package: "
     "pip install kernels, or set attn_implementation: sdpa"),
    ({"use_liger_kernel": True},
     "use_liger_kernel: true needs liger-kernel, which is not installed: pip install -e \".[liger]\" "
     "(liger-kernel), or set use_liger_kernel: false"),
    ({"padding_free": True, "packing": False},
     "padding_free: true without packing: TRL cannot enforce max_length on unpacked padding-free batches; set "
     "packing: true (packing_strategy: bfd) or padding_free: false"),
    ({"report_to": ["wandb"]}, "report_to wandb: wandb is not installed: pip install -e \".[wandb]\", or remove "
                               "wandb from report_to"),
])
def test_on_a_gpu_machine_a_missing_package_stops_with_what_to_install(values, message):
    with pytest.raises(UserError) as err:
        decide(values, GPU)
    assert str(err.value) == message


def test_on_a_gpu_machine_with_the_packages_nothing_changes():
    machine = Machine(on_gpu=True, installed=frozenset({"flash_attn", "liger_kernel", "wandb", "tensorboardX"}))
    values = {"attn_implementation": "flash_attention_2", "use_liger_kernel": True, "padding_free": True,
              "packing": True, "report_to": ["wandb", "tensorboard"]}
    assert decide(values, machine) == []
    # transformers runs flash_attention_2 from a Hub kernel when only `kernels` is installed.
    assert decide({"attn_implementation": "flash_attention_2"}, Machine(True, frozenset({"kernels"}))) == []


def test_on_cpu_gpu_only_requests_fall_back_with_one_note_each():
    values = {"attn_implementation": "kernels-community/flash-attn2", "use_liger_kernel": True, "padding_free": True,
              "report_to": "tensorboard"}
    assert decide(values, CPU) == [
        Fallback("attn_implementation", "sdpa", "attn_implementation kernels-community/flash-attn2 needs a GPU: "
                                                "using sdpa on this CPU machine"),
        Fallback("use_liger_kernel", False, "use_liger_kernel: Liger's Triton kernels need a GPU: turned off on this "
                                            "CPU machine"),
        Fallback("padding_free", False, "padding_free without packing: turned off on this CPU machine (padded "
                                        "batches; TRL enforces max_length on padding-free batches only when packing)"),
    ]
    with pytest.raises(UserError, match="^report_to trackio: trackio is not installed"):  # not a hardware matter
        decide({"report_to": ["tensorboard", "trackio"]}, CPU)
    with pytest.raises(UserError, match="^report_to tensorbord: not a tracker transformers knows; use one of "):
        decide({"report_to": "tensorbord"}, CPU)
    assert decide({"report_to": ["all"]}, CPU) == decide({"report_to": "none"}, CPU) == []


def test_a_tracker_that_is_not_installed_stops_before_anything_is_written(tmp_path, tiny_model, existing_output):
    import importlib.util

    if importlib.util.find_spec("dvclive"):
        pytest.skip("dvclive is installed here")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), output_dir=str(existing_output),
                          dataset_name=str(text_data(tmp_path / "d.jsonl")), report_to=["dvclive"], max_steps=1)
    proc = run_cli("train", recipe)
    assert_one_line_error(proc, "report_to dvclive: dvclive is not installed: pip install dvclive, or remove dvclive "
                                "from report_to")
    assert_untouched(existing_output)


# ---------------------------------------------------------------------------------------------------------------
# --help-all


def test_help_all_lists_every_key_grouped_by_origin():
    from sft.recipe.fields import known_fields

    proc = run_cli("train", "--help-all")
    assert proc.returncode == 0, proc.stderr
    listed, group = {}, None
    for line in proc.stdout.splitlines():
        if line.endswith("keys):"):
            group = line.rsplit(" (", 1)[0]
        elif line.startswith("  ") and not line.startswith("   ") and group and " (" in line:
            listed.setdefault(line.split()[0], []).append(group)
    assert set(listed) == set(known_fields())  # generated from the dataclasses: every key, once
    assert all(len(groups) == 1 for groups in listed.values())
    assert listed["method"] == ["sft's own keys"] and listed["accelerate_config"] == ["sft's own keys"]
    assert listed["packing"] == ["TRL SFTConfig: SFT-specific"]
    assert listed["learning_rate"] == ["transformers TrainingArguments (through TRL's SFTConfig)"]
    assert listed["lora_r"] == ["TRL ModelConfig -> PEFT LoraConfig (LoRA / QLoRA adapters)"]
    assert listed["load_in_4bit"] == ["TRL ModelConfig -> bitsandbytes quantization"]
    assert listed["dataset_name"] == ["TRL ScriptArguments: data"]
    assert "  eval_strategy (IntervalStrategy | str = 'no'): When to run evaluation." in proc.stdout
    assert "max_seq_length -> max_length" in proc.stdout


def test_this_machine_is_detected_from_torch_and_installed_modules():
    import importlib.util

    import torch

    from sft.capabilities import CHECKED_MODULES, this_machine

    machine = this_machine()
    assert machine.on_gpu == torch.cuda.is_available()
    assert machine.installed == {m for m in CHECKED_MODULES if importlib.util.find_spec(m)}
    assert "tensorboard" in machine.installed  # the test extra installs it
