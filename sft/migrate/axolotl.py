"""axolotl config keys -> sft recipe keys. Keys not listed here or handled in `convert` keep their name when sft
knows it (axolotl passes many TrainingArguments names through: learning_rate, weight_decay, logging_steps...)."""

import re

from sft.migrate import axolotl_data

# Keys only axolotl configs have: two of them (or base_model) mark a file as axolotl's.
MARKERS = ("base_model", "micro_batch_size", "sequence_len", "num_epochs", "lora_target_linear", "val_set_size",
           "sample_packing", "adapter")


def looks_like(data: dict) -> bool:
    return "base_model" in data or sum(key in data for key in MARKERS) >= 2


# Same value, another name.
RENAMED = {
    "base_model": "model_name_or_path",
    "sequence_len": "max_length",
    "micro_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "num_epochs": "num_train_epochs",
    "optimizer": "optim",
    "lr_scheduler": "lr_scheduler_type",
    "sample_packing": "packing",
    "eval_sample_packing": "eval_packing",
    "val_set_size": "test_split_size",
    "peft_use_dora": "use_dora",
    "peft_use_rslora": "use_rslora",
    "lora_modules_to_save": "lora_modules_to_save",
    "auto_resume_from_checkpoints": "resume",
    "wandb_name": "run_name",
}

# Keys sft has no equivalent for, and why.
UNSUPPORTED = {
    "model_type": "not needed: sft loads AutoModelForCausalLM and reads the architecture from the model's config.json",
    "tokenizer_type": "not needed: sft loads AutoTokenizer from the model folder",
    "base_model_config": "not needed: the config is read from model_name_or_path",
    "tokenizer_config": "sft loads the tokenizer from model_name_or_path; point it at a folder with both",
    "is_llama_derived_model": "not needed: sft reads the architecture from the model's config.json",
    "is_mistral_derived_model": "not needed: sft reads the architecture from the model's config.json",
    "strict": "axolotl's schema switch; sft always rejects unknown keys",
    "dataset_prepared_path": "sft caches tokenized data itself (under $SFT_CACHE_DIR, default the datasets cache)",
    "dataset_processes": "sft prepares data itself and caches the result; there is no worker count",
    "pad_to_sequence_len": "sft pads each batch to its longest example, not to max_length",
    "loss_watchdog_threshold": "sft stops on a loss that is not finite (NaN or inf), not above a threshold",
    "loss_watchdog_patience": "sft stops on a loss that is not finite (NaN or inf), not above a threshold",
    "lora_model_dir": "sft starts a new adapter; to train an adapter further, merge it first (`sft merge`)",
    "lora_fan_in_fan_out": "PEFT detects Conv1D layers itself",
    "save_first_step": "not supported; save_steps and save_strategy decide when checkpoints are written",
    "wandb_watch": "gradient logging is not configured by sft; set the WANDB_WATCH environment variable (env:)",
    "wandb_log_model": "set the WANDB_LOG_MODEL environment variable (env:) if you want checkpoints uploaded",
    "default_system_message": "sft does not add a system turn; put one in the data",
    "tokens": "sft adds only the tokens a built-in chat_template needs; add others to the tokenizer first",
    "push_dataset_to_hub": "not supported: sft pushes models (push_to_hub), not prepared data",
    "debug": "axolotl's debug logs tokenized examples; `sft preview RECIPE` shows them rendered, with their masks",
}

def convert(data: dict, migration) -> None:
    """The keys whose meaning or shape differs; each is reported through `migration`."""
    method(data, migration)
    if "lora_target_linear" in data or "lora_target_modules" in data:
        lora_targets(data, migration)
    if "datasets" in data or "pretraining_dataset" in data:
        axolotl_data.datasets(data, migration)
    if "chat_template" in data or "chat_template_jinja" in data:
        chat_template(data, migration)
    precision(data, migration)
    schedule(data, migration)
    if "special_tokens" in data:
        special_tokens(data["special_tokens"], migration)
    if "val_set_size" in data and not data["val_set_size"]:
        migration.note("val_set_size", "0: no eval split (sft's default)")
    if "train_on_inputs" in data:
        if data["train_on_inputs"]:
            migration.set("train_on_inputs", {"loss_mode": "all"}, "loss on prompts too")
        else:
            migration.note("train_on_inputs", "sft's default: loss on the answers only")
    attention(data, migration)
    trackers(data, migration)
    if "deepspeed" in data:
        migration.deepspeed("deepspeed", data["deepspeed"])
    if "fsdp" in data or "fsdp_config" in data:
        migration.fsdp("fsdp" if "fsdp" in data else "fsdp_config", data.get("fsdp"), data.get("fsdp_config"))
    if "cosine_min_lr_ratio" in data:
        migration.set("cosine_min_lr_ratio", {"lr_scheduler_type": "cosine_with_min_lr",
                                              "lr_scheduler_kwargs": {"min_lr_rate": data["cosine_min_lr_ratio"]}})


def method(data: dict, migration) -> None:
    adapter = data.get("adapter")
    if adapter not in (None, "lora", "qlora"):
        migration.skip("adapter", f"adapter {adapter!r} is not supported (sft trains lora, qlora, full or freeze)")
        return
    four_bit, eight_bit = data.get("load_in_4bit"), data.get("load_in_8bit")
    if adapter == "qlora" or (adapter == "lora" and four_bit):
        chosen = {"method": "qlora"}
    elif adapter == "lora":
        chosen = {"method": "lora", **({"load_in_8bit": True} if eight_bit else {})}
    elif data.get("unfrozen_parameters"):
        unfrozen(data["unfrozen_parameters"], migration)
        return
    else:
        chosen = {"method": "full"}
    migration.set("adapter" if adapter else "(no adapter)", chosen)
    if "unfrozen_parameters" in data:
        migration.skip("unfrozen_parameters", f"adapter {adapter}: axolotl trains the adapter; sft freezes no "
                                              "further parameters")
    for key in ("load_in_4bit", "load_in_8bit"):
        if key in data:
            migration.note(key, f"read into method: {chosen['method']}")
    if not adapter and (four_bit or eight_bit):
        migration.skip("load_in_4bit" if four_bit else "load_in_8bit", "a quantized base needs an adapter")


def unfrozen(patterns, migration) -> None:
    """axolotl trains only the parameters matching these regexes (src/axolotl/utils/freeze.py); sft's freeze method
    trains the parameters matching trainable_modules the same way. A row range ("embed_tokens.weight$[:32000]")
    trains part of a tensor: sft trains the whole tensor, and says so."""
    patterns = [str(p) for p in ([patterns] if isinstance(patterns, str) else patterns)]
    whole = [re.sub(r"\[\d*:\d*\]\s*$", "", p) for p in patterns]
    ranged = [p for p, w in zip(patterns, whole) if p != w]
    why = "only the parameters these patterns match are trained, the rest frozen"
    if ranged:
        why += f"; {', '.join(ranged)}: sft trains the whole tensor, not the row range"
    migration.set("unfrozen_parameters", {"method": "freeze", "trainable_modules": whole}, why)


def lora_targets(data: dict, migration) -> None:
    if data.get("lora_target_linear"):
        migration.set("lora_target_linear", {"lora_target_modules": ["all-linear"]})
        if "lora_target_modules" in data:  # axolotl adds the listed modules to every linear layer: all-linear
            migration.note("lora_target_modules", "included in all-linear (lora_target_linear: true)")
    elif "lora_target_modules" in data:
        modules = data["lora_target_modules"]
        migration.set("lora_target_modules", {"lora_target_modules": [modules] if isinstance(modules, str)
                                              else list(modules)})
    if "lora_target_linear" in data and not data["lora_target_linear"]:
        migration.note("lora_target_linear", "false: the listed lora_target_modules only")


def chat_template(data: dict, migration) -> None:
    """axolotl's template names that sft has built in (same name, same format) map; tokenizer_default is the
    model's own."""
    from sft.migrate.templates import family_template
    from sft.templates.chat import BUILTIN_TEMPLATES

    if data.get("chat_template_jinja"):
        migration.set("chat_template_jinja", {"chat_template": data["chat_template_jinja"]})
    name = data.get("chat_template")
    if name in (None, "jinja"):
        return
    if name == "tokenizer_default":
        migration.note("chat_template", "the model's own template (sft's default)")
    elif name in BUILTIN_TEMPLATES:
        migration.set("chat_template", {"chat_template": name}, "sft's built-in of the same name")
    elif family := family_template(name):
        values, why = family
        if values:
            migration.set("chat_template", values, why)
        else:
            migration.note("chat_template", why)
    else:
        migration.skip("chat_template", f"{name!r} is not an sft built-in ({', '.join(BUILTIN_TEMPLATES)}); "
                                            "sft uses the "
                                        "model's own template, or set chat_template to a .jinja file")


def precision(data: dict, migration) -> None:
    for key in ("bf16", "fp16", "tf32"):
        if key not in data:
            continue
        if data[key] == "auto":
            migration.note(key, "auto: left to sft, which picks the precision this machine supports")
        else:
            migration.set(key, {key: data[key]})


def schedule(data: dict, migration) -> None:
    """axolotl's schedule defaults, warmup_ratio, and evals/saves per epoch as fractions of the whole run (what
    TrainingArguments reads)."""
    if "lr_scheduler" not in data and "cosine_min_lr_ratio" not in data:
        # axolotl's config schema: lr_scheduler defaults to "cosine" (TRL's default is linear).
        migration.set("(lr_scheduler unset)", {"lr_scheduler_type": "cosine"}, "axolotl's default")
    if "warmup_ratio" in data:
        migration.set("warmup_ratio", {"warmup_steps": data["warmup_ratio"]}, "a float below 1 is a ratio")
    elif "warmup_steps" not in data:
        # axolotl's trainer builder: warmup_steps = min(int(0.03 * total_num_steps), 100) when neither is set.
        migration.set("(warmup_steps unset)", {"warmup_steps": 0.03},
                      "axolotl's default: 3% of the steps, which axolotl caps at 100; sft does not cap it, so runs "
                      "over 3,333 steps warm up longer: set warmup_steps: 100 for those")
    epochs = data.get("num_epochs", 1)
    if "num_epochs" not in data:
        migration.set("(num_epochs unset)", {"num_train_epochs": 1}, "axolotl's default")
    evals = data.get("evals_per_epoch")
    if data.get("eval_steps") and "eval_strategy" not in data:
        if data.get("val_set_size"):
            # axolotl evaluates every eval_steps when there is an eval split (val_set_size > 0).
            migration.set("eval_steps", {"eval_strategy": "steps", "eval_steps": data["eval_steps"]},
                          "axolotl evaluates every eval_steps on the val_set_size split")
        else:
            migration.skip("eval_steps", "val_set_size is 0: there is no eval split to evaluate")
    if evals:
        if not data.get("val_set_size"):
            migration.skip("evals_per_epoch", "val_set_size is 0: there is no eval split to evaluate")
        else:
            migration.set("evals_per_epoch", {"eval_strategy": "steps", "eval_steps": round(1 / (evals * epochs), 6)},
                          f"a fraction of all steps: {evals} per epoch over {epochs} epoch(s)")
    saves = data.get("saves_per_epoch")
    if saves == 1:
        migration.set("saves_per_epoch", {"save_strategy": "epoch"})
    elif saves:
        migration.set("saves_per_epoch", {"save_strategy": "steps", "save_steps": round(1 / (saves * epochs), 6)},
                      f"a fraction of all steps: {saves} per epoch over {epochs} epoch(s)")


def special_tokens(tokens: dict, migration) -> None:
    for name, value in tokens.items():
        if name in ("pad_token", "eos_token"):
            migration.set(f"special_tokens.{name}", {name: value})
        else:
            migration.skip(f"special_tokens.{name}", "sft sets only pad_token and eos_token")


def attention(data: dict, migration) -> None:
    """axolotl's attention switches; xformers (not an attention transformers has) becomes sdpa, PyTorch's
    memory-efficient attention."""
    for key in ("xformers_attention", "attn_implementation"):
        if data.get(key) in (True, "xformers"):
            migration.set(key, {"attn_implementation": "sdpa"}, "xformers is not in transformers; sdpa is PyTorch's "
                                                                 "memory-efficient attention, the same computation")
    if data.get("xformers_attention") is False:
        migration.note("xformers_attention", "false: not used")
    if data.get("flash_attention"):
        migration.set("flash_attention", {"attn_implementation": "flash_attention_2"})
    if data.get("sdp_attention"):
        migration.set("sdp_attention", {"attn_implementation": "sdpa"})


def trackers(data: dict, migration) -> None:
    """wandb_project/entity name a wandb run; use_tensorboard adds tensorboard (report_to and env merge)."""
    if data.get("wandb_project"):
        migration.set("wandb_project", {"report_to": ["wandb"], "env": {"WANDB_PROJECT": str(data["wandb_project"])}})
    if data.get("wandb_entity"):
        migration.set("wandb_entity", {"env": {"WANDB_ENTITY": str(data["wandb_entity"])}})
    if data.get("use_tensorboard"):
        migration.set("use_tensorboard", {"report_to": ["tensorboard"]})
