"""The keys a recipe may set: TRL's `ScriptArguments`, `SFTConfig` (so every `TrainingArguments` field),
`ModelConfig` and `DatasetMixtureConfig`, alignment-handbook's `dataset_mixture` and `chat_template`, and the
few keys of `SftArguments` below; old names and what they are now; and the `Recipe` they are read into.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sft.launch.profiles import PROFILES

METHODS = ("full", "lora", "qlora", "freeze")


@dataclass(frozen=True)
class Range:
    """The values a number key accepts, beyond its type; None always passes (the default applies)."""

    low: float | None = None
    high: float | None = None
    above_low: bool = False  # low itself is refused
    below_high: bool = False  # high itself is refused
    note: str = ""

    def allows(self, value) -> bool:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        low_ok = self.low is None or (value > self.low if self.above_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.below_high else value <= self.high)
        return low_ok and high_ok

    def describe(self, whole: bool) -> str:
        low = _number(self.low) if self.low is not None else ""
        if self.high is None:
            text = f"greater than {low}" if self.above_low else f"{low} or more"
        elif self.below_high:
            text = f"at least {low} and below {_number(self.high)}"
        else:
            text = f"from {low} to {_number(self.high)}"
        return ("a whole number " if whole else "") + text + (f" ({self.note})" if self.note else "")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE, NOT_NEGATIVE, FRACTION = Range(0, above_low=True), Range(0), Range(0, 1, below_high=True)
# TRL's and transformers' number fields whose libraries accept any value and leave torch, numpy or the optimizer to
# fail mid-run, or to do something else than asked without a word (their dataclasses carry no ranges of their own:
# constructing SFTConfig with each of these values raises nothing).
LIBRARY_RANGES = {
    "per_device_train_batch_size": POSITIVE,
    "per_device_eval_batch_size": POSITIVE,
    "gradient_accumulation_steps": POSITIVE,
    "eval_accumulation_steps": POSITIVE,
    "max_length": Range(0, above_low=True, note="or null for no limit"),
    "num_train_epochs": POSITIVE,
    "max_steps": Range(-1, note="-1: num_train_epochs decides"),
    "learning_rate": NOT_NEGATIVE,
    "weight_decay": NOT_NEGATIVE,
    "warmup_steps": Range(0, note="a number of steps, or a ratio below 1"),
    "adam_epsilon": NOT_NEGATIVE,
    "adam_beta1": FRACTION,
    "adam_beta2": FRACTION,
    "max_grad_norm": Range(0, note="0 turns clipping off; a negative norm would flip the gradients"),
    "seed": Range(0, 2**32 - 1, note="numpy's seed range"),
    "data_seed": Range(0, 2**32 - 1, note="numpy's seed range"),
    "save_total_limit": Range(0, above_low=True, note="or null to keep every checkpoint"),
    "dataset_num_proc": Range(0, above_low=True, note="or null for one process"),
    "dataloader_num_workers": NOT_NEGATIVE,
    "lora_r": POSITIVE,
    "lora_alpha": POSITIVE,
    "lora_dropout": FRACTION,
}


def value_range(key: str, f: dataclasses.Field) -> Range | None:
    """sft's own keys declare their range in the field's metadata; the libraries' keys are in LIBRARY_RANGES."""
    return f.metadata.get("range") or LIBRARY_RANGES.get(key)
LOSS_MODES = ("completion", "assistant", "last_assistant", "all")


@dataclass
class SftArguments:
    """This toolkit's own recipe keys; everything else is TRL's or transformers' own name."""

    method: str | None = field(
        default=None,
        metadata={"help": "full | lora | qlora | freeze. Default: from TRL's use_peft/load_in_4bit, else full.",
                  "choices": list(METHODS)},
    )
    trainable_layers: int | None = field(
        default=None, metadata={"range": POSITIVE,
                                "help": "freeze: train only the last N transformer blocks."}
    )
    trainable_modules: list[str] | None = field(
        default=None, metadata={"help": "freeze: also train parameters whose name matches one of these regexes."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "A built-in template name, inline Jinja, or a path to a .jinja file (alignment-handbook)."},
    )
    dataset_mixture: dict | None = field(
        default=None, metadata={"help": "alignment-handbook mixture: {datasets: [{id, config, split, columns, "
                                        "weight}], test_split_size, seed}."}
    )
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "Force a format instead of detecting it: chat, sharegpt, instruction, "
                          "prompt_completion, text."},
    )
    column_mapping: dict | None = field(
        default=None, metadata={"help": "Rename source columns to the format's names, e.g. {question: prompt}."}
    )
    loss_mode: str | None = field(
        default=None,
        metadata={"help": "completion | assistant | last_assistant | all. Default: assistant for chat data, "
                          "completion for instruction and prompt/completion data, all for text.",
                  "choices": list(LOSS_MODES)},
    )
    instruction_template: str = field(
        default="chat",
        metadata={"help": "How instruction data is rendered: 'chat' (a user and an assistant turn through the "
                          "chat template) or 'alpaca' (the Alpaca prompt).", "choices": ["chat", "alpaca"]},
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip (and count) rows that fail validation."})
    max_dropped_fraction: float = field(
        default=0.5,
        metadata={"range": Range(0, 1),
                  "help": "Fail when more than this share of examples lose all trained tokens to max_length."},
    )
    mask_fallback: str = field(
        default="context",
        metadata={"help": "How assistant turns share examples when the chat template renders earlier turns "
                          "differently from how the model generated them (e.g. drops their reasoning): 'context' "
                          "(each turn trained in the context the model sees: one example per turn where needed, "
                          "else one per conversation), 'last_assistant' (train only the last assistant turn), "
                          "'split_turns' (always one example per assistant turn) or 'error' (stop, naming the "
                          "example).",
                  "choices": ["context", "last_assistant", "split_turns", "error"]},
    )
    chat_template_kwargs: dict | None = field(
        default=None,
        metadata={"help": "Extra variables for the chat template, e.g. {enable_thinking: false}; a row's own "
                          "chat_template_kwargs override them for that row."},
    )
    data_cache: bool = field(
        default=True,
        metadata={"help": "Reuse the tokenized data of an earlier run or `sft check` with the same data, tokenizer, "
                          "template and settings (kept under $SFT_CACHE_DIR, default the datasets cache)."},
    )
    resume: bool = field(
        default=True, metadata={"help": "Resume from the newest complete checkpoint in output_dir, if any."}
    )
    env: dict | None = field(default=None, metadata={"help": "Environment variables to set before the run."})
    global_batch_size: int | None = field(
        default=None, metadata={"range": POSITIVE,
                                "help": "Examples per optimizer step over all processes; sft sets "
                                        "gradient_accumulation_steps from it and the number of processes "
                                        "(fails when they do not divide it)."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"range": POSITIVE,
                                "help": "Stop after this many evaluations without improvement of "
                                        "metric_for_best_model (default eval_loss); needs eval_strategy."}
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"range": NOT_NEGATIVE,
                               "help": "Early stopping: the least change of the metric that counts as improvement."}
    )
    sample_prompts: list[str] | None = field(
        default=None, metadata={"help": "User messages answered with the training template every "
                                        "sample_every_n_steps (default: the first sample_count eval examples)."}
    )
    sample_every_n_steps: int | None = field(
        default=None, metadata={"range": POSITIVE,
                                "help": "Write generation samples to output_dir/samples.jsonl and the trackers "
                                        "every N steps."}
    )
    sample_count: int = field(default=3, metadata={"range": POSITIVE,
                                                   "help": "Eval examples to sample from when no sample_prompts."})
    sample_max_new_tokens: int = field(default=64, metadata={"range": POSITIVE,
                                                             "help": "Longest generation sample, in tokens."})
    accelerate_config: str | None = field(
        default=None, metadata={"help": "TRL's CLI key: `sft train` runs under `sft launch` with this profile of "
                                        "accelerate_configs/ (auto: the planner's choice).",
                                "choices": ["auto", *PROFILES]}
    )
    num_processes: int | None = field(
        default=None, metadata={"range": POSITIVE,
                                "help": "TRL's CLI key: processes to start; over 1, `sft train` runs under "
                                        "`sft launch` (default profile: auto)."}
    )
    provenance: dict | None = field(
        default=None, metadata={"help": "Written by sft into output_dir/recipe.yaml; ignored when read."}
    )


# Old names found in published recipes and guides -> today's name. Values are converted where the meaning moved.
RENAMED_KEYS = {
    "max_seq_length": "max_length",
    "torch_dtype": "dtype",
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",  # transformers 5: a float warmup_steps in [0, 1) is a ratio
    "use_flash_attention_2": "attn_implementation",
    "overwrite_output_dir": "resume",
    "preprocessing_num_workers": "dataset_num_proc",  # alignment-handbook before v0.4
}
RENAMED_VALUES = {
    "use_flash_attention_2": lambda v: "flash_attention_2" if v else None,
    "overwrite_output_dir": lambda v: not v,
}
# Keys whose string values are paths; a relative path is looked up from the working directory, then from the
# recipe's own folder (so a recipe and its data can travel together).
PATH_KEYS = ("model_name_or_path", "dataset_name", "chat_template_path", "chat_template")
# Where sft's default differs from TRL's, and why.
SFT_DEFAULTS = {
    "include_num_input_tokens_seen": "non_padding",  # the final summary reports tokens seen
}


@dataclass
class Recipe:
    """A validated recipe: TRL's dataclasses plus ours, and where it came from."""

    script: Any  # trl.ScriptArguments
    training: Any  # trl.SFTConfig
    model: Any  # trl.ModelConfig
    mixture: Any  # trl.DatasetMixtureConfig
    sft: SftArguments
    source: str  # the path or address the user gave
    base_dir: Path  # folder that relative data paths resolve against
    explicit: dict = field(default_factory=dict)  # keys set by the recipe or the command line, as resolved
    notes: list = field(default_factory=list)  # one-line messages for the user (renames, hardware choices)
    command_line: frozenset = frozenset()  # keys set on the command line
    provenance: dict | None = None  # an earlier run's provenance: this recipe is that run's resolved recipe
    # Values finalize changed for this run alone (push_to_hub: sft pushes itself); the resolved recipe writes the
    # value asked for.
    asked: dict = field(default_factory=dict)


def recipe_dataclasses():
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig

    return {"script": ScriptArguments, "training": SFTConfig, "model": ModelConfig, "mixture": DatasetMixtureConfig,
            "sft": SftArguments}


def known_fields() -> dict[str, list[tuple[str, dataclasses.Field, Any]]]:
    """key -> [(section, field, type)] for every init field of every recipe dataclass."""
    table = {}
    for section, cls in recipe_dataclasses().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                table.setdefault(f.name, []).append((section, f, hints.get(f.name, Any)))
    return table




def field_type(key: str, table: dict | None = None):
    """The type of the field a recipe key (or its old name) sets; None for a key no field has. `table`: a
    known_fields() table (default: from the imported dataclasses)."""
    fields = (known_fields() if table is None else table).get(RENAMED_KEYS.get(key, key))
    return fields[0][2] if fields else None


@lru_cache(maxsize=None)
def source_config_class():
    """TRL's DatasetConfig (one `datasets:` entry) with sft's per-source keys; the recipe loader builds entries
    from it so that unknown keys fail there, named."""
    from trl.scripts.utils import DatasetConfig

    @dataclass
    class SourceConfig(DatasetConfig):
        format: str | None = field(default=None, metadata={"help": "Force this source's format (as dataset_format)."})
        column_mapping: dict | None = field(default=None, metadata={"help": "Rename this source's columns."})

    return SourceConfig


def extended_entry_type(tp):
    """The class a recipe builds for a dataclass-typed entry: TRL's DatasetConfig gains sft's per-source keys."""
    from trl.scripts.utils import DatasetConfig

    return source_config_class() if tp is DatasetConfig else tp
