"""`sft migrate` gives the recipe the values a user of the source tool trains with, defaults included. Each
expectation names where the source tool documents it. Configs are written as users write them (comments, blank
keys, LLaMA-Factory's `### section` headers)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from sft.errors import UserError
from sft.migrate.convert import migrate
from tests.conftest import REPO, run_cli

FIXTURES = sorted((Path(__file__).parent / "realworld").iterdir())  # published configs, as released
# With the project's shared folder beside the repo, its other axolotl and LLaMA-Factory configs too.
REALWORLD = FIXTURES + [p for p in sorted((REPO.parent / "shared" / "realworld" / "configs").glob("[al]*"))
                        if p.name not in {f.name for f in FIXTURES}]


def migrated(tmp_path, text, name="config.yml"):
    config = tmp_path / name
    config.write_text(text)
    return migrate(str(config))


def reasons(migration):
    return dict(migration.unmapped)


def mapped(migration):
    return {their_key: what for their_key, what, _ in migration.mapped}


# --- axolotl -----------------------------------------------------------------------------------------------------

def test_axolotl_default_schedule_is_cosine_with_3_percent_warmup(tmp_path):
    # axolotl docs/config reference: `lr_scheduler:  # 'one_cycle' | ... | empty for cosine`; its trainer builder
    # (src/axolotl/core/builders/causal.py, warmup_steps) uses min(int(0.03 * total_num_steps), 100) when neither
    # warmup_steps nor warmup_ratio is set. TRL's own defaults are linear and no warmup.
    migration = migrated(tmp_path, "base_model: some/model\nmicro_batch_size: 2\nlearning_rate: 0.0002\n")
    assert migration.recipe["lr_scheduler_type"] == "cosine"
    assert migration.recipe["warmup_steps"] == 0.03
    assert mapped(migration)["(lr_scheduler unset)"] == "lr_scheduler_type: cosine (axolotl's default)"
    assert mapped(migration)["(warmup_steps unset)"].startswith("warmup_steps: 0.03 (axolotl's default: 3% of the "
                                                                "steps, which axolotl caps at 100;")
    # Set values are kept as they are.
    migration = migrated(tmp_path, "base_model: m\nmicro_batch_size: 2\nlr_scheduler: linear\nwarmup_steps: 10\n")
    assert migration.recipe["lr_scheduler_type"] == "linear" and migration.recipe["warmup_steps"] == 10
    assert "(warmup_steps unset)" not in mapped(migration)


def test_axolotl_data_files_of_a_hub_dataset_are_kept(tmp_path):
    # axolotl docs/dataset_loading: `data_files` picks files of a Hub dataset repo, with or without ds_type.
    migration = migrated(tmp_path, "base_model: m\ndatasets:\n  - path: org/conversations\n"
                                   "    data_files:\n      - data/train-00000.jsonl\n    type: chat_template\n")
    assert migration.recipe["datasets"] == [{"path": "org/conversations", "format": "chat",
                                             "data_files": ["data/train-00000.jsonl"]}]
    # sft then reads only that file of the repo (a local folder here, through the same datasets call).
    from sft.data.sources import load_source_parts

    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train-00000.jsonl").write_text('{"text": "kept"}\n')
    (folder / "data" / "train-00001.jsonl").write_text('{"text": "left out"}\n{"text": "left out"}\n')
    [part] = load_source_parts(str(folder), data_files=["data/train-00000.jsonl"])
    assert part.dataset["text"] == ["kept"]


def test_axolotl_eval_steps_with_val_set_size_turn_evaluation_on(tmp_path, tiny_model):
    # axolotl evaluates every eval_steps on the val_set_size split (docs/config reference: eval_steps, "Leave empty
    # to eval at each epoch"); without eval_strategy the recipe would never evaluate and early stopping is refused.
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n" for i in range(8)))
    (tmp_path / "axolotl.yml").write_text(
        f"base_model: {tiny_model}\ndatasets:\n  - path: chat.jsonl\n    type: chat_template\nval_set_size: 0.25\n"
        "eval_steps: 20\nearly_stopping_patience: 3\nmicro_batch_size: 2\noutput_dir: ./out\n")
    run_cli("migrate", "axolotl.yml", "-o", "recipe.yaml", cwd=tmp_path, check=True)
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert (recipe["eval_strategy"], recipe["eval_steps"], recipe["test_split_size"]) == ("steps", 20, 0.25)
    from sft.recipe.load import load_recipe
    from sft.train.callbacks import check_early_stopping

    check_early_stopping(load_recipe(str(tmp_path / "recipe.yaml")))  # refused before: no evaluations
    # No eval split: nothing to evaluate, and the report says why.
    migration = migrated(tmp_path, "base_model: m\nmicro_batch_size: 2\nval_set_size: 0\neval_steps: 20\n")
    assert "eval_strategy" not in migration.recipe
    assert reasons(migration)["eval_steps"] == "val_set_size is 0: there is no eval split to evaluate"


def test_axolotl_xformers_becomes_sdpa_and_torchao_optimizer_is_reported(tmp_path):
    migration = migrated(tmp_path, "base_model: m\nmicro_batch_size: 2\nattn_implementation: xformers\n"
                                   "optimizer: adamw_torch_8bit\n")
    assert migration.recipe["attn_implementation"] == "sdpa"
    assert mapped(migration)["attn_implementation"] == (
        "attn_implementation: sdpa (xformers is not in transformers; sdpa is PyTorch's memory-efficient attention, "
        "the same computation)")
    migration = migrated(tmp_path, "base_model: m\nmicro_batch_size: 2\nxformers_attention: true\n")
    assert migration.recipe["attn_implementation"] == "sdpa"
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        migration = migrated(tmp_path, "base_model: m\nmicro_batch_size: 2\noptimizer: adamw_torch_8bit\n")
        assert "optim" not in migration.recipe
        assert reasons(migration)["optimizer"] == (
            "optim adamw_torch_8bit needs torchao, which is not installed: pip install torchao, or set optim: "
            "adamw_bnb_8bit (bitsandbytes' 8-bit AdamW)")


def test_axolotl_keys_sft_has_an_equivalent_for(tmp_path):
    migration = migrated(tmp_path, """\
base_model: some/model
datasets:
  - path: tatsu-lab/alpaca
    type: alpaca:phi
  - path: ./convos.jsonl
    type: sharegpt
    conversation: chatml
unfrozen_parameters:
  - ^lm_head.weight$
  - ^model.embed_tokens.weight$[:32000]
  - model.layers.2[0-9]+.mlp.*
debug: true
fsdp:
  - full_shard
  - auto_wrap
fsdp_config:
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
chat_template: gemma3
""")
    recipe = migration.recipe
    assert recipe["datasets"] == [{"path": "tatsu-lab/alpaca", "format": "instruction"},
                                  {"path": "./convos.jsonl", "format": "sharegpt"}]
    assert "instruction_template" not in recipe  # alpaca:phi: instruction rows through the chat template (default)
    assert "chat_template" not in recipe  # the model's own
    assert mapped(migration)["chat_template"] == ("(gemma3: the chat template Gemma-3 models ship, which sft renders "
                                                  "with by default)")
    # axolotl's unfrozen_parameters (src/axolotl/utils/freeze.py) train only the matching parameters.
    assert (recipe["method"], recipe["trainable_modules"]) == (
        "freeze", ["^lm_head.weight$", "^model.embed_tokens.weight$", "model.layers.2[0-9]+.mlp.*"])
    assert "^model.embed_tokens.weight$[:32000]: sft trains the whole tensor" in mapped(migration)[
        "unfrozen_parameters"]
    assert migration.launch_profile == "fsdp2"
    assert reasons(migration)["debug"].startswith("axolotl's debug logs tokenized examples; `sft preview RECIPE`")
    assert reasons(migration)["datasets[].conversation"].startswith("chatml: chat_template gemma3 is set too")
    # Without a template of its own, sharegpt's conversation: chatml is sft's built-in chatml.
    migration = migrated(tmp_path, "base_model: m\ndatasets:\n  - path: c.jsonl\n    type: sharegpt\n"
                                   "    conversation: chatml\n")
    assert migration.recipe["chat_template"] == "chatml"


def test_axolotl_pretraining_dataset_is_text_data(tmp_path):
    # axolotl docs/config reference: pretraining_dataset: [{path, name, type: pretrain, text_column, split}].
    migration = migrated(tmp_path, "base_model: m\nmax_steps: 100\npretraining_dataset:\n"
                                   "  - path: allenai/c4\n    name: en\n    type: pretrain\n    text_column: content\n")
    assert {k: migration.recipe[k] for k in ("dataset_name", "dataset_config", "dataset_format", "column_mapping")} \
        == {"dataset_name": "allenai/c4", "dataset_config": "en", "dataset_format": "text",
            "column_mapping": {"content": "text"}}
    assert "pretraining_dataset" not in reasons(migration)


# --- LLaMA-Factory -----------------------------------------------------------------------------------------------

LLAMAFACTORY = """\
### model
model_name_or_path: Qwen/Qwen3-4B-Instruct-2507

### method
stage: sft
do_train: true
finetuning_type: lora
"""


def test_llamafactory_without_learning_rate_trains_at_transformers_default(tmp_path):
    # LLaMA-Factory's TrainingArguments are transformers' Seq2SeqTrainingArguments: learning_rate defaults to 5e-5
    # there, not TRL's 2e-5.
    from transformers import TrainingArguments

    migration = migrated(tmp_path, LLAMAFACTORY, "lf.yaml")
    assert migration.recipe["learning_rate"] == TrainingArguments.__dataclass_fields__["learning_rate"].default
    assert migration.recipe["learning_rate"] == 5e-5
    migration = migrated(tmp_path, LLAMAFACTORY + "learning_rate: 1.0e-4\n", "lf.yaml")
    assert migration.recipe["learning_rate"] == 1e-4


def test_llamafactory_keys_sft_has_an_equivalent_for(tmp_path):
    migration = migrated(tmp_path, LLAMAFACTORY + "template: qwen3_nothink\ndisable_gradient_checkpointing: true\n"
                                                  "fsdp: full_shard auto_wrap\n", "lf.yaml")
    # hparams/model_args.py: disable_gradient_checkpointing (default False: LLaMA-Factory checkpoints by default).
    assert migration.recipe["gradient_checkpointing"] is False
    assert migration.recipe["chat_template_kwargs"] == {"enable_thinking": False}
    assert migration.launch_profile == "fsdp2"
    migration = migrated(tmp_path, LLAMAFACTORY + "fsdp: [full_shard, auto_wrap]\nquantization_bit: 4\n", "lf.yaml")
    assert migration.launch_profile == "fsdp2_qlora"  # was "'fsdp' must be str"
    offload = ("fsdp: full_shard offload auto_wrap\nfsdp_config:\n"
               "  fsdp_transformer_layer_cls_to_wrap: Qwen3DecoderLayer\n")
    migration = migrated(tmp_path, LLAMAFACTORY + offload, "lf.yaml")
    assert migration.launch_profile is None and "fsdp_config" not in migration.recipe
    assert reasons(migration)["fsdp"].startswith("CPU offload: sft's FSDP profiles keep everything on the GPUs")
    for name, family in [("llama2", "Llama-2-chat"), ("phi_3", "Phi-3"), ("gemma3", "Gemma-3")]:
        migration = migrated(tmp_path, LLAMAFACTORY + f"template: {name}\n", "lf.yaml")
        assert mapped(migration)["template"] == (f"({name}: the chat template {family} models ship, which sft "
                                                 "renders with by default)")


def test_llamafactory_preprocess_only_config_is_refused(tmp_path):
    # data/loader.py: with tokenized_path missing, LLaMA-Factory tokenizes, saves there and exits without training.
    text = LLAMAFACTORY + "tokenized_path: saves/tokenized\n"
    with pytest.raises(UserError) as refused:
        migrated(tmp_path, text, "lf.yaml")
    assert str(refused.value) == (
        f"{tmp_path / 'lf.yaml'}: tokenized_path saves/tokenized does not exist yet, so this config only tokenizes "
        "and saves the data, without training; sft prepares and caches data with `sft check RECIPE`. Remove "
        "tokenized_path to migrate the training run")
    (tmp_path / "saves" / "tokenized").mkdir(parents=True)  # the second run: LLaMA-Factory trains from it
    migration = migrated(tmp_path, text, "lf.yaml")
    assert "tokenized_path" in mapped(migration) and migration.recipe["model_name_or_path"]


def test_llamafactory_max_samples_keeps_the_first_rows_of_each_file(tmp_path, tiny_model):
    # hparams/data_args.py: max_samples truncates each dataset; data/loader.py selects range(max_samples).
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.json").write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": str(i)}
                                              for i in range(10)], ensure_ascii=False, indent=2))
    (data / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.json"}}))
    (tmp_path / "lf.yaml").write_text(LLAMAFACTORY.replace("Qwen/Qwen3-4B-Instruct-2507", str(tiny_model))
                                      + "dataset: qa\nmax_samples: 4\nval_size: 0.25\n")
    run_cli("migrate", "lf.yaml", "-o", "recipe.yaml", cwd=tmp_path, check=True)
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["dataset_train_split"] == "train[:4]"
    from sft.data.prepare import read_mix_split
    from sft.recipe.load import load_recipe

    split = read_mix_split(load_recipe(str(tmp_path / "recipe.yaml"))).split
    rows = [*split.train, *split.eval]
    assert (len(split.train), len(split.eval)) == (3, 1)  # val_size splits the 4 rows kept
    assert sorted(json.loads(r["example"])["messages"][0]["content"] for r in rows) == [f"Say {i}" for i in range(4)]
    assert sorted(r["where"].rsplit(" ", 1)[1] for r in rows) == ["1", "2", "3", "4"]  # rows of the file named


# --- every key of the published configs -------------------------------------------------------------------------

@pytest.mark.parametrize("config", REALWORLD, ids=lambda p: p.name)
def test_every_key_of_a_published_config_is_mapped_or_listed(tmp_path, config):
    data = yaml.safe_load(config.read_text())
    (tmp_path / config.name).write_text(config.read_text())
    proc = run_cli("migrate", config.name, "-o", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    empty = next((line.split(": ", 1)[1].split(", ") for line in lines if line.startswith("empty in ")), [])
    reported = {re.split(r"[.\[ :]", line.strip(), maxsplit=1)[0] for line in lines if line.startswith("  ")}
    for key in data:
        assert key in reported or key in empty, f"{key} is neither mapped nor listed"
    # What the source tool trains with when the config leaves it out is written, not TRL's default.
    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    if "base_model" in data:
        assert recipe.get("lr_scheduler_type", "cosine") == data.get("lr_scheduler", "cosine")
    else:
        assert recipe["learning_rate"] == float(data.get("learning_rate", 5e-5))
    assert proc.stderr == ""
