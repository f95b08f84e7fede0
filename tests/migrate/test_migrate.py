"""`sft migrate`: axolotl and LLaMA-Factory configs (written here with the structure of their published examples,
the model and data swapped for local ones) become sft recipes that `sft check` accepts and `sft train` runs; every
key is reported as mapped or not, with why; `sft train` given such a config says what to do in one line."""

import json

import pytest
import yaml

from tests.conftest import REPO, run_cli

WORDS = [json.loads(line)["instruction"].split(": ")[1]
         for line in (REPO / "recipes" / "data" / "uppercase_train.jsonl").read_text().splitlines()[:32]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_rows():
    return [{"messages": [{"role": "user", "content": f"Uppercase: {w}"}, {"role": "assistant", "content": w.upper()}]}
            for w in WORDS]


def sharegpt_rows(column="conversations"):
    return [{column: [{"from": "human", "value": f"Uppercase: {w}"}, {"from": "gpt", "value": w.upper()}]}
            for w in WORDS]


def alpaca_rows(instruction="instruction", extra="input", output="output"):
    return [{instruction: "Uppercase the word.", extra: w, output: w.upper()} for w in WORDS]


AXOLOTL_CHAT = """\
base_model: {model}
# optionally might have model_type or tokenizer_type
model_type: LlamaForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: true
load_in_4bit: false

chat_template: chatml
datasets:
  - path: {root}/chat.jsonl
    type: chat_template

dataset_prepared_path:
val_set_size: 0.25
output_dir: {root}/axolotl-chat-run

sequence_len: 128
sample_packing: false

adapter: lora
lora_model_dir:
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true

wandb_project:
wandb_entity:

gradient_accumulation_steps: 2
micro_batch_size: 4
num_epochs: 2
optimizer: adamw_torch
lr_scheduler: cosine
learning_rate: 0.0002

bf16: auto
tf32: false

gradient_checkpointing: true
resume_from_checkpoint:
logging_steps: 1
attn_implementation: sdpa

warmup_ratio: 0.1
evals_per_epoch: 2
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
   pad_token: <|im_end|>
"""

AXOLOTL_QLORA = """\
base_model: {model}
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true

datasets:
  - path: {root}/alpaca.jsonl
    type: alpaca
  - path: {root}/sharegpt.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
dataset_prepared_path: last_run_prepared
val_set_size: 0
output_dir: {root}/axolotl-qlora-run

adapter: qlora
lora_model_dir:

sequence_len: 256
sample_packing: true

lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
lora_target_modules:
  - q_proj
  - v_proj

gradient_accumulation_steps: 1
micro_batch_size: 4
num_epochs: 1
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

bf16: auto
tf32: false

gradient_checkpointing: true
logging_steps: 1
attn_implementation: sdpa

loss_watchdog_threshold: 5.0
loss_watchdog_patience: 3

warmup_ratio: 0.1
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
"""

LLAMAFACTORY_QLORA = """\
### model
model_name_or_path: {model}
quantization_bit: 4  # choices: [8 (bnb/hqq/eetq), 4 (bnb/hqq), 3 (hqq), 2 (hqq)]
quantization_method: bnb  # choices: [bnb, hqq, eetq]
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 4
lora_target: q_proj,v_proj
deepspeed: examples/deepspeed/ds_z3_config.json  # choices: [ds_z0_config.json, ds_z2_config.json, ds_z3_config.json]

### dataset
dataset: my_alpaca,my_sharegpt
template: qwen3_nothink
cutoff_len: 256
max_samples: 1000
preprocessing_num_workers: 16
dataloader_num_workers: 0

### output
output_dir: {root}/llamafactory-run
logging_steps: 1
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 2
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""

LLAMAFACTORY_DATASETS = {
    "my_alpaca": {"file_name": "alpaca_qa.json", "columns": {"prompt": "question", "query": "context",
                                                             "response": "answer"}},
    "my_sharegpt": {"file_name": "dialogs.json", "formatting": "sharegpt", "columns": {"messages": "dialog"}},
}


def migrate(root, config_name, text, **values):
    config = root / config_name
    config.write_text(text.format(root=root, **values))
    proc = run_cli("migrate", config.name, "-o", "recipe.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load((root / "recipe.yaml").read_text()), proc.stdout.splitlines()


def section(lines, title):
    """The indented lines under `title (N):` of the migrate report, stripped."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{title} ("))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    assert lines[start] == f"{title} ({len(body)}):"
    return body


def check_and_train(root, output_dir):
    run_cli("check", "recipe.yaml", cwd=root, check=True)
    run_cli("train", "recipe.yaml", "--max_steps", "2", cwd=root, check=True)
    assert (output_dir / "adapter_model.safetensors").is_file()
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


@pytest.mark.slow
def test_axolotl_chat_lora_8bit_migrates_and_trains(tiny_model, tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    recipe, lines = migrate(tmp_path, "lora-8b.yml", AXOLOTL_CHAT, model=tiny_model)
    assert recipe == {
        "model_name_or_path": str(tiny_model), "attn_implementation": "sdpa", "method": "lora", "load_in_8bit": True,
        "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_target_modules": ["all-linear"],
        "chat_template": "chatml", "pad_token": "<|im_end|>", "dataset_name": f"{tmp_path}/chat.jsonl",
        "dataset_format": "chat", "test_split_size": 0.25, "max_length": 128, "packing": False,
        "output_dir": f"{tmp_path}/axolotl-chat-run", "num_train_epochs": 2.0, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2, "learning_rate": 0.0002, "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1, "weight_decay": 0.0, "optim": "adamw_torch", "tf32": False,
        "gradient_checkpointing": True, "eval_strategy": "steps", "eval_steps": 0.25, "save_strategy": "epoch",
        "logging_steps": 1.0,
    }
    assert lines[0] == "sft migrate: axolotl config lora-8b.yml -> recipe.yaml"
    mapped = section(lines, "mapped")
    for line in ["base_model -> model_name_or_path: " + str(tiny_model),
                 "adapter -> method: lora, load_in_8bit: true",
                 "load_in_4bit -> (read into method: lora)",
                 "chat_template -> chat_template: chatml (sft's built-in of the same name)",
                 f"datasets -> dataset_name: {tmp_path}/chat.jsonl, dataset_format: chat",
                 "sequence_len -> max_length: 128",
                 "micro_batch_size -> per_device_train_batch_size: 4",
                 "optimizer -> optim: adamw_torch",
                 "bf16 -> (auto: left to sft, which picks the precision this machine supports)",
                 "evals_per_epoch -> eval_strategy: steps, eval_steps: 0.25 (a fraction of all steps: 2 per epoch "
                 "over 2 epoch(s))",
                 "special_tokens.pad_token -> pad_token: <|im_end|>"]:
        assert line in mapped
    assert section(lines, "not mapped") == [
        "model_type: not needed: sft loads AutoModelForCausalLM and reads the architecture from the model's "
        "config.json",
        "tokenizer_type: not needed: sft loads AutoTokenizer from the model folder"]
    assert ("empty in lora-8b.yml, nothing to carry over: dataset_prepared_path, lora_model_dir, wandb_project, "
            "wandb_entity, resume_from_checkpoint") in lines
    check_and_train(tmp_path, tmp_path / "axolotl-chat-run")


@pytest.mark.slow
def test_axolotl_qlora_alpaca_and_sharegpt_migrates_and_trains(tiny_model, tmp_path):
    write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())
    write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    recipe, lines = migrate(tmp_path, "qlora.yml", AXOLOTL_QLORA, model=tiny_model)
    assert recipe["method"] == "qlora" and "load_in_4bit" not in recipe and "load_in_8bit" not in recipe
    assert recipe["datasets"] == [{"path": f"{tmp_path}/alpaca.jsonl", "format": "instruction"},
                                  {"path": f"{tmp_path}/sharegpt.jsonl", "format": "sharegpt"}]
    assert recipe["instruction_template"] == "alpaca"  # axolotl's alpaca type renders the Alpaca prompt
    assert recipe["lora_target_modules"] == ["all-linear"] and recipe["packing"] is True
    assert recipe["optim"] == "paged_adamw_32bit" and recipe["save_strategy"] == "epoch"
    assert "test_split_size" not in recipe and "eval_strategy" not in recipe
    assert section(lines, "not mapped") == [
        "model_type: not needed: sft loads AutoModelForCausalLM and reads the architecture from the model's "
        "config.json",
        "tokenizer_type: not needed: sft loads AutoTokenizer from the model folder",
        "dataset_prepared_path: sft caches tokenized data itself (under $SFT_CACHE_DIR, default the datasets cache)",
        "loss_watchdog_threshold: sft stops on a loss that is not finite (NaN or inf), not above a threshold",
        "loss_watchdog_patience: sft stops on a loss that is not finite (NaN or inf), not above a threshold",
        "evals_per_epoch: val_set_size is 0: there is no eval split to evaluate"]
    mapped = section(lines, "mapped")
    assert "lora_target_modules -> (included in all-linear (lora_target_linear: true))" in mapped
    assert "val_set_size -> (0: no eval split (sft's default))" in mapped
    # The unmapped keys head the written recipe, as comments.
    text = (tmp_path / "recipe.yaml").read_text()
    assert text.startswith("# Migrated by `sft migrate` from the axolotl config qlora.yml.\n# Not mapped:\n"
                           "#   model_type: not needed")
    check_and_train(tmp_path, tmp_path / "axolotl-qlora-run")


@pytest.mark.slow
def test_llamafactory_qlora_with_dataset_info_migrates_and_trains(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "alpaca_qa.json").write_text(json.dumps(alpaca_rows("question", "context", "answer")))
    (data / "dialogs.json").write_text(json.dumps(sharegpt_rows("dialog")))
    (data / "dataset_info.json").write_text(json.dumps(LLAMAFACTORY_DATASETS))
    recipe, lines = migrate(tmp_path, "qwen3_lora_sft_otfq.yaml", LLAMAFACTORY_QLORA, model=tiny_model)
    assert recipe == {
        "model_name_or_path": str(tiny_model), "trust_remote_code": True, "method": "qlora", "lora_r": 4,
        "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": ["q_proj", "v_proj"],
        "datasets": [{"path": "data/alpaca_qa.json", "format": "instruction",
                      "column_mapping": {"question": "instruction", "context": "input", "answer": "output"},
                      "split": "train[:1000]"},
                     {"path": "data/dialogs.json", "format": "sharegpt",
                      "column_mapping": {"dialog": "conversations"}, "split": "train[:1000]"}],
        "max_length": 256, "output_dir": f"{tmp_path}/llamafactory-run", "num_train_epochs": 3.0,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 0.0001,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "bf16": True, "resume": False,
        "dataloader_num_workers": 0, "logging_steps": 1.0, "save_steps": 500.0, "save_only_model": False,
        "report_to": "none", "ddp_timeout": 180000000, "chat_template_kwargs": {"enable_thinking": False},
    }
    mapped = section(lines, "mapped")
    for line in ["finetuning_type -> method: qlora",
                 "quantization_bit -> (4: read into method: qlora)",
                 "lora_rank -> lora_r: 4",
                 "(lora_alpha unset) -> lora_alpha: 8 (LLaMA-Factory's default: twice lora_rank)",
                 "(lora_dropout unset) -> lora_dropout: 0.0 (LLaMA-Factory's default)",
                 "cutoff_len -> max_length: 256",
                 "overwrite_output_dir -> resume: false (start over)",
                 "deepspeed -> (the launch profile zero3_qlora: `sft launch RECIPE --profile zero3_qlora`)"]:
        assert line in mapped
    assert section(lines, "not mapped") == [
        "preprocessing_num_workers: sft prepares data itself and caches the result; there is no worker count",
        "plot_loss: `sft report OUTPUT_DIR` plots the loss (and more) after the run"]
    assert "launch: sft launch recipe.yaml --profile zero3_qlora" in lines
    check_and_train(tmp_path, tmp_path / "llamafactory-run")


def test_llamafactory_freeze_without_dataset_info_and_other_stages(tmp_path):
    from sft.errors import UserError
    from sft.migrate.convert import migrate as migrate_config, missing_keys

    config = tmp_path / "freeze.yaml"
    config.write_text("model_name_or_path: some/model\nstage: sft\nfinetuning_type: freeze\n"
                      "freeze_trainable_layers: 1\nlora_rank: 8\ndataset: alpaca_en_demo\n"
                      "deepspeed: examples/deepspeed/ds_z2_config.json\nfp16: true\ngradient_checkpointing: yes\n"
                      "val_size: 0.1\nsome_new_option: 3\n")
    migration = migrate_config(str(config))
    assert migration.recipe == {"method": "freeze", "trainable_layers": 1, "learning_rate": 5e-5, "max_length": 2048,
                                "model_name_or_path": "some/model", "fp16": True, "gradient_checkpointing": True,
                                "test_split_size": 0.1}
    assert migration.launch_profile == "zero2"
    assert dict(migration.unmapped) == {
        "lora_rank": "finetuning_type is freeze: no adapter to configure",
        "dataset": "alpaca_en_demo: names in LLaMA-Factory's dataset_info.json, not found under data/; set "
                   "dataset_name (a data file or Hub dataset) in the recipe",
        "some_new_option": "no sft equivalent (LLaMA-Factory's own key)"}
    assert missing_keys(migration.recipe) == ["dataset_name (a data file or Hub dataset)"]
    config.write_text("model_name_or_path: some/model\nstage: dpo\nfinetuning_type: lora\n")
    with pytest.raises(UserError) as refused:
        migrate_config(str(config))
    assert str(refused.value) == (f"{config}: stage 'dpo' is not supervised fine-tuning; sft migrates stage: sft "
                                  "configs only")


def test_a_mapped_value_sft_would_reject_is_reported_not_written(tmp_path):
    from sft.migrate.convert import migrate as migrate_config

    config = tmp_path / "axolotl.yml"
    config.write_text("base_model: some/model\noptimizer: adamw_unknown\nlr_scheduler: rex\nlearning_rate: 2e-4\n")
    migration = migrate_config(str(config))
    assert "optim" not in migration.recipe and "lr_scheduler_type" not in migration.recipe
    assert migration.recipe["learning_rate"] == 0.0002  # YAML reads 2e-4 as a string; the recipe holds the number
    reasons = dict(migration.unmapped)
    assert reasons["optimizer"].startswith("'optim' must be one of adamw_torch, adamw_torch_fused, ")
    assert reasons["optimizer"].endswith(", got 'adamw_unknown'")
    assert reasons["lr_scheduler"].startswith("'lr_scheduler_type' must be one of linear, cosine, ")
    assert reasons["lr_scheduler"].endswith(", got 'rex'")


@pytest.mark.parametrize("name, text, tool", [
    ("axolotl.yml", "base_model: m\ndatasets:\n  - path: d\n    type: alpaca\nmicro_batch_size: 2\n", "axolotl"),
    ("lf.yaml", "model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nlora_rank: 8\n", "LLaMA-Factory"),
])
def test_train_names_a_foreign_config_in_one_line(tmp_path, name, text, tool):
    (tmp_path / name).write_text(text)
    proc = run_cli("train", name, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {name} is a config for {tool}, not an sft recipe; convert it with `sft migrate {name} -o "
        "recipe.yaml` (it lists what maps and what does not), then `sft train recipe.yaml`"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_migrate_refuses_to_overwrite(tmp_path):
    config = tmp_path / "axolotl.yml"
    config.write_text("base_model: some/model\nmicro_batch_size: 2\n")
    existing = tmp_path / "recipe.yaml"
    existing.write_text("learning_rate: 1.0e-5\n")
    proc = run_cli("migrate", config, "-o", existing)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {existing} exists; pass --force to replace it"]
    assert existing.read_text() == "learning_rate: 1.0e-5\n"
    proc = run_cli("migrate", config, "-o", config, "--force")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {config}: is the config being migrated; write the recipe to another "
                                        "file"]
    assert config.read_text() == "base_model: some/model\nmicro_batch_size: 2\n"
    run_cli("migrate", config, "-o", existing, "--force", check=True)
    assert yaml.safe_load(existing.read_text()) == {"model_name_or_path": "some/model", "method": "full",
                                                    "per_device_train_batch_size": 2, "lr_scheduler_type": "cosine",
                                                    "warmup_steps": 0.03, "num_train_epochs": 1.0}
    # one key per line, though every value is a scalar (PyYAML alone writes such a mapping as one inline {...})
    assert [line for line in existing.read_text().splitlines() if not line.startswith("#")] == [
        "model_name_or_path: some/model", "method: full", "num_train_epochs: 1.0", "per_device_train_batch_size: 2",
        "lr_scheduler_type: cosine", "warmup_steps: 0.03"]


def test_migrate_refuses_a_file_of_no_other_tool(tmp_path):
    recipe = tmp_path / "trl.yaml"
    recipe.write_text("model_name_or_path: m\ndataset_name: d\n")
    proc = run_cli("migrate", recipe, "-o", tmp_path / "out.yaml")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {recipe}: not an axolotl config (base_model, micro_batch_size...) or a LLaMA-Factory one (stage, "
        "finetuning_type...); an sft or TRL recipe runs as it is"]
    assert not (tmp_path / "out.yaml").exists()
