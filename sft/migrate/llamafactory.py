"""LLaMA-Factory config keys -> sft recipe keys. LLaMA-Factory passes TrainingArguments names through unchanged
(learning_rate, num_train_epochs, lr_scheduler_type, bf16...): keys not listed here keep their name when sft knows
it. Datasets are names in `dataset_dir/dataset_info.json`; they are read from there when the file is found."""

import json
from pathlib import Path

STAGES = ("sft", "pt", "rm", "ppo", "dpo", "kto")


def looks_like(data: dict) -> bool:
    return "finetuning_type" in data or (data.get("stage") in STAGES and any(
        key in data for key in ("cutoff_len", "template", "dataset", "lora_rank", "lora_target")))


RENAMED = {
    "cutoff_len": "max_length",
    "streaming": "dataset_streaming",  # TRL's name; sft streams local files and Hub datasets alike
    "val_size": "test_split_size",
    "enable_liger_kernel": "use_liger_kernel",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
    "additional_target": "lora_modules_to_save",
}

UNSUPPORTED = {
    "preprocessing_num_workers": "sft prepares data itself and caches the result; there is no worker count",
    "plot_loss": "`sft report OUTPUT_DIR` plots the loss (and more) after the run",
    "eval_dataset": "sft evaluates on a split of the training data (test_split_size, from val_size)",
    "mix_strategy": "sft concatenates the datasets (or mixes them by `fraction` in datasets:)",
    "interleave_probs": "use `fraction` on each entry of datasets: instead",
    "use_unsloth": "not supported",
    "neat_packing": "use packing: true with padding_free: true (examples do not attend to each other)",
    "export_dir": "`sft merge OUTPUT_DIR` writes the merged model after training",
    "adapter_name_or_path": "sft starts a new adapter; to train an adapter further, merge it first (`sft merge`)",
    "create_new_adapter": "sft always starts a new adapter",
    "pissa_init": "not supported",
    "loraplus_lr_ratio": "not supported",
    "freeze_trainable_modules": "sft's freeze trains whole blocks (trainable_layers) plus trainable_modules regexes",
}


def convert(data: dict, migration) -> None:
    stage = data.get("stage", "sft")
    if stage != "sft":
        from sft.errors import UserError

        raise UserError(f"{migration.source}: stage {stage!r} is not supervised fine-tuning; sft migrates stage: sft "
                        "configs only")
    migration.note("stage", "sft: supervised fine-tuning, what sft trains")
    if "do_train" in data:
        migration.note("do_train", "sft train trains")
    method(data, migration)
    if "dataset" in data:
        datasets(data, migration)
    if "dataset_dir" in data:
        migration.note("dataset_dir", "read for dataset_info.json")
    if "template" in data:
        template(data["template"], migration)
    if "max_samples" in data:
        max_samples(data, migration)
    if "tokenized_path" in data:
        tokenized_path(data, migration)
    if "fsdp" in data or "fsdp_config" in data:
        migration.fsdp("fsdp" if "fsdp" in data else "fsdp_config", data.get("fsdp"), data.get("fsdp_config"))
    if "disable_gradient_checkpointing" in data:
        # LLaMA-Factory's ModelArguments: checkpointing is on unless disable_gradient_checkpointing (TRL's default too).
        migration.set("disable_gradient_checkpointing",
                      {"gradient_checkpointing": not data["disable_gradient_checkpointing"]})
    if "learning_rate" not in data:
        # LLaMA-Factory passes transformers' TrainingArguments through: learning_rate defaults to 5e-5 there (TRL's
        # SFTConfig, and so sft, defaults to 2e-5).
        migration.set("(learning_rate unset)", {"learning_rate": 5e-5}, "transformers' default, which "
                                                                        "LLaMA-Factory trains with")
    if "cutoff_len" not in data:
        migration.set("(cutoff_len unset)", {"max_length": 2048}, "LLaMA-Factory's default")
    if "warmup_ratio" in data:
        migration.set("warmup_ratio", {"warmup_steps": data["warmup_ratio"]}, "a float below 1 is a ratio")
    if "overwrite_output_dir" in data:
        migration.set("overwrite_output_dir", {"resume": not data["overwrite_output_dir"]},
                      "start over" if data["overwrite_output_dir"] else "resume from output_dir's checkpoints")
    if "deepspeed" in data:
        migration.deepspeed("deepspeed", data["deepspeed"])
    if "quantization_method" in data:
        if data["quantization_method"] == "bnb":
            migration.note("quantization_method", "bnb: sft quantizes with bitsandbytes")
        else:
            migration.skip("quantization_method", f"{data['quantization_method']}: sft quantizes with bitsandbytes "
                                                  "(bnb) only")
    if "flash_attn" in data:
        attention = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager"}.get(data["flash_attn"])
        if attention:
            migration.set("flash_attn", {"attn_implementation": attention})
        else:
            migration.note("flash_attn", f"{data['flash_attn']}: left to transformers' default")
    if data.get("train_on_prompt"):
        migration.set("train_on_prompt", {"loss_mode": "all"}, "loss on prompts too")
    if data.get("mask_history"):
        migration.set("mask_history", {"loss_mode": "last_assistant"}, "loss on the last answer only")
    for key in ("train_on_prompt", "mask_history"):
        if key in data and not data[key]:
            migration.note(key, "false: sft's default")


def method(data: dict, migration) -> None:
    kind = data.get("finetuning_type", "lora")  # LLaMA-Factory's default
    bits = data.get("quantization_bit")
    if kind not in ("full", "lora", "freeze"):
        migration.skip("finetuning_type", f"{kind!r} is not supported (sft trains lora, qlora, full or freeze)")
        return
    chosen = {"method": "qlora" if kind == "lora" and bits == 4 else kind}
    if kind == "lora" and bits == 8:
        chosen["load_in_8bit"] = True
    migration.set("finetuning_type", chosen)
    if bits is not None:
        if bits in (4, 8) and kind == "lora":
            migration.note("quantization_bit", f"{bits}: read into method: {chosen['method']}")
        else:
            migration.skip("quantization_bit", f"{bits}-bit: sft quantizes LoRA bases to 4 (qlora) or 8 bits")
    if kind != "lora":
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target"):
            if key in data:
                migration.skip(key, f"finetuning_type is {kind}: no adapter to configure")
    else:
        rank = data.get("lora_rank", 8)
        migration.set("lora_rank" if "lora_rank" in data else "(lora_rank unset)", {"lora_r": rank},
                      "" if "lora_rank" in data else "LLaMA-Factory's default")
        alpha = data.get("lora_alpha")
        migration.set("lora_alpha" if alpha else "(lora_alpha unset)", {"lora_alpha": alpha or 2 * rank},
                      "" if alpha else "LLaMA-Factory's default: twice lora_rank")
        migration.set("lora_dropout" if "lora_dropout" in data else "(lora_dropout unset)",
                      {"lora_dropout": data.get("lora_dropout", 0.0)},
                      "" if "lora_dropout" in data else "LLaMA-Factory's default")
        target = data.get("lora_target", "all")
        modules = ["all-linear"] if target == "all" else [t.strip() for t in str(target).split(",") if t.strip()]
        migration.set("lora_target" if "lora_target" in data else "(lora_target unset)",
                      {"lora_target_modules": modules}, "" if "lora_target" in data else "LLaMA-Factory's default")
    if kind == "freeze":
        layers = data.get("freeze_trainable_layers", 2)
        if layers > 0:
            migration.set("freeze_trainable_layers" if "freeze_trainable_layers" in data
                          else "(freeze_trainable_layers unset)", {"trainable_layers": layers}, "the last N blocks")
        else:
            migration.skip("freeze_trainable_layers", "a negative count trains the first blocks; sft trains the last")
        if data.get("freeze_extra_modules"):
            modules = [m.strip() for m in str(data["freeze_extra_modules"]).split(",") if m.strip()]
            migration.set("freeze_extra_modules", {"trainable_modules": modules})


def dataset_info(data: dict, migration) -> tuple[dict | None, Path | None]:
    """(dataset_info.json's entries, its folder): dataset_dir (default data) from the working directory, then
    from the config's folder."""
    folder = Path(str(data.get("dataset_dir", "data")))
    for candidate in ([folder] if folder.is_absolute() else [folder, migration.base_dir / folder]):
        info = candidate / "dataset_info.json"
        if info.is_file():
            return json.loads(info.read_text()), candidate
    return None, None


def dataset_source(name: str, entry: dict, folder: Path, migration) -> dict | None:
    """One dataset_info.json entry as an sft source, or None (reported) when sft cannot read it as described."""
    where = f"dataset: {name}"
    if entry.get("file_name"):
        source = {"path": str(folder / entry["file_name"])}
    elif entry.get("hf_hub_url"):
        source = {"path": entry["hf_hub_url"], **({"name": entry["subset"]} if entry.get("subset") else {})}
    else:
        migration.skip(where, "only file_name and hf_hub_url entries of dataset_info.json can be read")
        return None
    if entry.get("split"):
        source["split"] = entry["split"]
    if entry.get("ranking"):
        migration.skip(where, "a ranking (preference) dataset is not supervised fine-tuning data")
        return None
    columns = entry.get("columns") or {}
    if entry.get("formatting", "alpaca") == "alpaca":
        source["format"] = "instruction"
        wanted = {"prompt": "instruction", "query": "input", "response": "output"}
        mapping = {columns.get(theirs, ours): ours for theirs, ours in wanted.items()
                   if columns.get(theirs, ours) != ours}
        for extra in ("history", "system", "tools", "images", "videos", "audios"):
            if columns.get(extra):
                migration.skip(f"{where}.columns.{extra}",
                               "sft's instruction rows have instruction, input, output only")
    else:
        tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                **(entry.get("tags") or {})}
        column = columns.get("messages", "conversations")
        if (tags["role_tag"], tags["content_tag"], tags["user_tag"], tags["assistant_tag"]) == (
                "from", "value", "human", "gpt"):
            source["format"], target = "sharegpt", "conversations"
        elif (tags["role_tag"], tags["content_tag"], tags["user_tag"], tags["assistant_tag"]) == (
                "role", "content", "user", "assistant"):
            source["format"], target = "chat", "messages"
        else:
            migration.skip(where, f"turn tags {tags}: sft reads role/content with user/assistant (chat) or "
                                  "from/value with human/gpt (sharegpt)")
            return None
        mapping = {column: target} if column != target else {}
        for extra in ("system", "tools", "images", "videos", "audios"):
            if columns.get(extra):
                migration.skip(f"{where}.columns.{extra}", "a separate column is not read: sft reads the system "
                                                           "turn and tools from the conversation rows")
    if mapping:
        source["column_mapping"] = mapping
    return source


def datasets(data: dict, migration) -> None:
    names = data["dataset"] if isinstance(data["dataset"], list) else str(data["dataset"]).split(",")
    names = [n.strip() for n in names if n.strip()]
    info, folder = dataset_info(data, migration)
    if info is None:
        migration.skip("dataset", f"{', '.join(names)}: names in LLaMA-Factory's dataset_info.json, not found under "
                                  f"{data.get('dataset_dir', 'data')}/; set dataset_name (a data file or Hub dataset) "
                                  "in the recipe")
        return
    sources = []
    for name in names:
        if name not in info:
            migration.skip(f"dataset: {name}", f"not in {folder / 'dataset_info.json'}")
        elif source := dataset_source(name, info[name], folder, migration):
            sources.append(source)
    migration.sources("dataset", sources)


def max_samples(data: dict, migration) -> None:
    """LLaMA-Factory's DataArguments.max_samples keeps the first N rows of each dataset (its loader selects
    range(max_samples)): each source's split sliced, "train[:N]"."""
    count = data["max_samples"]
    sliced = [k for k in ("dataset_name", "dataset_train_split") if k in migration.recipe] or (
        ["datasets"] if "datasets" in migration.recipe else [])
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        migration.skip("max_samples", f"{count!r}: a positive number of rows was expected")
    elif not sliced:
        migration.skip("max_samples", f"no dataset was mapped; set the split of your data source to train[:{count}]")
    elif "datasets" in migration.recipe:
        sources = [{**s, "split": f"{s.get('split', 'train')}[:{count}]"} for s in migration.recipe["datasets"]]
        migration.set("max_samples", {"datasets": sources}, f"the first {count} rows of each dataset")
    else:
        split = migration.recipe.get("dataset_train_split", "train")
        migration.set("max_samples", {"dataset_train_split": f"{split}[:{count}]"}, f"the first {count} rows")


def tokenized_path(data: dict, migration) -> None:
    """LLaMA-Factory loads tokenized data from tokenized_path when it is there; when it is not, it tokenizes, saves
    the data there and exits without training (its data loader). sft caches prepared data itself."""
    folder = Path(str(data["tokenized_path"]))
    if folder.exists() or (migration.base_dir / folder).exists():
        migration.note("tokenized_path", "the data LLaMA-Factory saved; sft prepares the datasets itself and caches "
                                         "them")
        return
    from sft.errors import UserError

    raise UserError(f"{migration.source}: tokenized_path {folder} does not exist yet, so this config only tokenizes "
                    "and saves the data, without training; sft prepares and caches data with `sft check RECIPE`. "
                    "Remove tokenized_path to migrate the training run")


def template(name: str, migration) -> None:
    from sft.migrate.templates import family_template
    from sft.templates.chat import BUILTIN_TEMPLATES

    family = family_template(name)
    if name in BUILTIN_TEMPLATES:
        migration.set("template", {"chat_template": name}, "sft's built-in of the same name")
    elif family and family[0]:
        migration.set("template", *family)
    elif family:
        migration.note("template", family[1])
    elif name in ("empty", "default"):
        migration.skip("template", f"{name}: sft trains with a chat template (the model's own or chat_template)")
    else:
        migration.skip("template", f"{name!r} is LLaMA-Factory's own template name; sft renders with the model's own "
                                   "chat template (or set chat_template: a built-in name or a .jinja file)")
