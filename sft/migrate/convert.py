"""`sft migrate FILE -o recipe.yaml`: another tool's config read key by key through its table (sft/migrate/axolotl.py,
sft/migrate/llamafactory.py), every mapped value checked as `sft train` would check it, and the recipe written with
what did not map listed at its top. Nothing is written until every check has passed."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError
from sft.io import recipe_yaml, write_atomic
from sft.migrate.detect import TOOLS, foreign_tool

# Recipe keys in the order a reader looks for them; the rest follow in the order they were mapped.
ORDER = ("model_name_or_path", "trust_remote_code", "attn_implementation", "method", "load_in_8bit", "lora_r",
         "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "use_dora", "use_rslora",
         "trainable_layers", "trainable_modules", "chat_template", "pad_token", "eos_token", "dataset_name",
         "dataset_config", "dataset_train_split", "dataset_format", "column_mapping", "datasets",
         "instruction_template", "loss_mode", "test_split_size", "max_length", "packing", "eval_packing",
         "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
         "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "optim", "bf16",
         "fp16", "tf32", "gradient_checkpointing")
# Keys whose values from several source keys add up instead of replacing each other.
MERGED_LISTS = ("report_to",)


def shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Migration:
    """What one config became: the recipe, and for each of its keys what it mapped to or why it did not."""

    tool: str
    source: str  # the file as the user named it
    base_dir: Path  # the config's folder
    recipe: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)  # recipe key -> the config key it came from
    mapped: list = field(default_factory=list)  # (their key, what it became, the recipe keys it set)
    unmapped: list = field(default_factory=list)  # (their key, why not)
    empty: list = field(default_factory=list)  # their keys without a value
    handled: set = field(default_factory=set)  # their top-level keys already reported
    positions: dict = field(default_factory=dict)  # their key -> its place in the file, to report in file order
    launch_profile: str | None = None

    def _handled(self, their_key: str) -> None:
        self.handled.add(re.split(r"[.\[ :]", their_key, maxsplit=1)[0])

    def set(self, their_key: str, values: dict, why: str = "") -> None:
        self._handled(their_key)
        for key, value in values.items():
            old = self.recipe.get(key)
            if isinstance(old, dict) and isinstance(value, dict):
                value = {**old, **value}
            elif key in MERGED_LISTS and isinstance(old, list):
                value = old + [v for v in value if v not in old]
            self.recipe[key], self.origin[key] = value, their_key
        self.mapped.append((their_key, ", ".join(f"{k}: {shown(v)}" for k, v in values.items())
                            + (f" ({why})" if why else ""), tuple(values)))

    def note(self, their_key: str, what: str) -> None:
        """A key honoured without a recipe key of its own (read into another, or sft's default)."""
        self._handled(their_key)
        self.mapped.append((their_key, f"({what})", ()))

    def skip(self, their_key: str, why: str) -> None:
        self._handled(their_key)
        self.unmapped.append((their_key, why))

    def unset(self, key: str, why: str) -> None:
        """Take a mapped recipe key back out: its source key is reported as not mapped, with why."""
        del self.recipe[key]
        self.mapped = [(theirs, what, keys) for theirs, what, keys in self.mapped
                       if not keys or any(k in self.recipe for k in keys)]
        self.skip(self.origin[key], why)

    def sources(self, their_key: str, sources: list[dict]) -> None:
        """Data sources {path, name, split, data_files, format, column_mapping}: dataset_name and its keys for one
        plain source, else a `datasets:` list."""
        if not sources:
            return
        [first, *others] = sources
        if others or first.get("data_files"):
            self.set(their_key, {"datasets": sources})
            return
        values = {"dataset_name": first["path"]}
        if first.get("name"):
            values["dataset_config"] = first["name"]
        if first.get("split", "train") != "train":
            values["dataset_train_split"] = first["split"]
        if first.get("format"):
            values["dataset_format"] = first["format"]
        if first.get("column_mapping"):
            values["column_mapping"] = first["column_mapping"]
        self.set(their_key, values)

    def deepspeed(self, their_key: str, config) -> None:
        """A DeepSpeed config becomes the launch profile with the same ZeRO stage (profiles are not recipe keys)."""
        profile = zero_profile(config, self.base_dir, self.recipe.get("method"))
        if profile is None:
            self.skip(their_key, f"{config}: cannot tell its ZeRO stage; pick a profile with `sft launch --profile`")
            return
        self.launch_profile = profile
        self.note(their_key, f"the launch profile {profile}: `sft launch RECIPE --profile {profile}`")


    def fsdp(self, their_key: str, options, config) -> None:
        """FSDP options (`full_shard auto_wrap`, as a string or list) and their config become the fsdp2 launch
        profile, which shards weights, gradients and optimizer states as full_shard does."""
        options = str(options).split() if isinstance(options, str) else [str(o) for o in options or []]
        settings = config if isinstance(config, dict) else {}
        if "offload" in options or any("offload" in k and v for k, v in settings.items()):
            self.skip(their_key, "CPU offload: sft's FSDP profiles keep everything on the GPUs; the zero3_offload "
                                 "profile offloads (`sft launch RECIPE --profile zero3_offload`)")
        elif options and not {"full_shard", "hybrid_shard"} & set(options):
            self.skip(their_key, f"{' '.join(options)}: sft's FSDP profile shards the weights too (full_shard); for "
                                 "gradients and optimizer states only, use `sft launch RECIPE --profile zero2`")
        else:
            self.launch_profile = "fsdp2_qlora" if self.recipe.get("method") == "qlora" else "fsdp2"
            self.note(their_key, f"the launch profile {self.launch_profile} (PyTorch FSDP2, fully sharded): `sft "
                                 f"launch RECIPE --profile {self.launch_profile}`")
        if their_key != "fsdp_config" and config:
            self.note("fsdp_config", f"read with {their_key}")


def zero_profile(config, base_dir: Path, method: str | None) -> str | None:
    """The launch profile for a DeepSpeed config: its zero_optimization when the file is here, else its name
    (ds_z3_config.json, zero3_bf16_cpuoffload_all.json...)."""
    from sft.launch.profiles import PROFILES

    stage, offload = None, False
    if isinstance(config, dict):
        settings = config
    else:
        path = next((p for p in (Path(str(config)), base_dir / str(config)) if p.is_file()), None)
        settings = json.loads(path.read_text()) if path else None
    if settings is not None:
        zero = settings.get("zero_optimization", {})
        stage = zero.get("stage", 0)
        offload = any((zero.get(k) or {}).get("device", "none") != "none" for k in ("offload_param",
                                                                                      "offload_optimizer"))
    else:
        found = re.search(r"(?:z|zero)_?(\d)", Path(str(config)).name)
        if not found:
            return None
        stage, offload = int(found.group(1)), "offload" in str(config)
    if stage == 3:
        profile = "zero3_offload" if offload else "zero3_qlora" if method == "qlora" else "zero3"
    else:
        profile = "zero2" if stage in (1, 2) else "multi_gpu"  # no ZeRO-1 profile: ZeRO-2 shards more
    return profile if profile in PROFILES else None


def migrate(address: str) -> Migration:
    """Read a foreign config and map every key; raise UserError for a file that is not one."""
    from sft.recipe.fields import known_fields
    from sft.recipe.reading import locate, read_yaml_with_lines

    config_file = locate(address)
    data, _ = read_yaml_with_lines(config_file)
    tool = foreign_tool(data)
    if tool is None:
        raise UserError(f"{address}: not an axolotl config (base_model, micro_batch_size...) or a LLaMA-Factory one "
                        "(stage, finetuning_type...); an sft or TRL recipe runs as it is")
    migration = Migration(tool, config_file.display, config_file.base_dir, positions={k: n for n, k in enumerate(data)})
    present = {}
    for key, value in data.items():
        if value is None or value == "" or value == [] or value == {}:
            migration.empty.append(key)
        else:
            present[key] = value
    table = TOOLS[tool]
    table.convert(present, migration)
    known = known_fields()
    for key, value in present.items():
        if key in migration.handled:
            continue
        if key in table.RENAMED:
            migration.set(key, {table.RENAMED[key]: value})
        elif key in table.UNSUPPORTED:
            migration.skip(key, table.UNSUPPORTED[key])
        elif key in known:
            migration.set(key, {key: value})
        else:
            migration.skip(key, f"no sft equivalent ({tool}'s own key)")
    check_values(migration)
    check_tokens(migration)
    return migration


def check_values(migration: Migration) -> None:
    """Every mapped value through the recipe loader's own key and type checks (which hold fields typed `Enum | str`,
    such as optim and lr_scheduler_type, to the enum's values). One that fails is moved to the unmapped keys with
    the reason, so the written recipe loads."""
    from sft.capabilities import installed_modules, unusable_request
    from sft.recipe.coercion import check_keys

    installed = installed_modules()
    for key in list(migration.recipe):
        try:
            [checked] = check_keys({key: migration.recipe[key]}, lambda k: "value", []).values()
        except UserError as err:
            migration.unset(key, str(err).removeprefix("value: "))  # "'optim' must be one of ..., got '...'"
            continue
        problem = unusable_request({key: checked}, installed)  # what `sft train` would refuse
        if problem:
            migration.unset(key, problem)
            continue
        if isinstance(checked, (bool, int, float, str)):
            migration.recipe[key] = checked  # e.g. YAML's string 1e-4 as the number it means


def check_tokens(migration: Migration) -> None:
    """pad_token/eos_token must be tokens of the model (TRL refuses others; axolotl adds them). With a local model
    the vocabulary is checked now, and a token it lacks is left out: sft then pads as the tokenizer does."""
    model = migration.recipe.get("model_name_or_path")
    wanted = [key for key in ("pad_token", "eos_token") if key in migration.recipe]
    if not wanted or not isinstance(model, str) or not Path(model).is_dir():
        return
    from transformers import AutoTokenizer

    vocabulary = AutoTokenizer.from_pretrained(model, local_files_only=True).get_vocab()
    for key in wanted:
        token = migration.recipe[key]
        if token not in vocabulary:
            migration.unset(key, f"{token!r} is not a token of {model} (axolotl would add it; "
                                                  "sft uses only the model's own tokens)")


def missing_keys(recipe: dict) -> list[str]:
    wanted = {"model_name_or_path": "model_name_or_path", "dataset_name": "dataset_name (a data file or Hub dataset)"}
    if "datasets" in recipe:
        wanted.pop("dataset_name")
    return [shown_as for key, shown_as in wanted.items() if key not in recipe]


def ordered(recipe: dict) -> dict:
    first = {key: recipe[key] for key in ORDER if key in recipe}
    return {**first, **{key: value for key, value in recipe.items() if key not in first}}


def recipe_text(migration: Migration, output: Path) -> str:
    lines = [f"# Migrated by `sft migrate` from the {migration.tool} config {migration.source}."]
    if migration.launch_profile:
        lines.append(f"# Launch: sft launch {output} --profile {migration.launch_profile}")
    if missing_keys(migration.recipe):
        lines.append(f"# Set before training: {', '.join(missing_keys(migration.recipe))}")
    if migration.unmapped:
        lines.append("# Not mapped:")
        lines += [f"#   {key}: {why}" for key, why in in_file_order(migration.unmapped, migration.positions)]
    body = recipe_yaml(ordered(migration.recipe), allow_unicode=True)
    return "\n".join(lines) + "\n" + body


def in_file_order(entries: list[tuple], positions: dict) -> list[tuple]:
    """Entries sorted by where their key is in the config; derived ones ("(num_epochs unset)") last."""
    def place(entry):
        return positions.get(re.split(r"[.\[ :]", entry[0], maxsplit=1)[0], len(positions))

    return sorted(entries, key=place)


def report_lines(migration: Migration, output: Path) -> list[str]:
    lines = [f"sft migrate: {migration.tool} config {migration.source} -> {output}",
             f"mapped ({len(migration.mapped)}):"]
    lines += [f"  {key} -> {what}" for key, what, _ in in_file_order(migration.mapped, migration.positions)]
    lines.append(f"not mapped ({len(migration.unmapped)}):")
    lines += [f"  {key}: {why}" for key, why in in_file_order(migration.unmapped, migration.positions)]
    if migration.empty:
        lines.append(f"empty in {migration.source}, nothing to carry over: {', '.join(migration.empty)}")
    if migration.launch_profile:
        lines.append(f"launch: sft launch {output} --profile {migration.launch_profile}")
    if missing_keys(migration.recipe):
        lines.append(f"set before training: {', '.join(missing_keys(migration.recipe))}")
    return lines


def check_output(address: str, output: Path, force: bool) -> None:
    """Refuse to replace the config itself, or any existing file without --force."""
    if output.exists() and Path(address).exists() and output.resolve() == Path(address).resolve():
        raise UserError(f"{output}: is the config being migrated; write the recipe to another file")
    if output.is_dir():
        raise UserError(f"{output}: is a folder; name the recipe file to write, e.g. {output / 'recipe.yaml'}")
    if output.exists() and not force:
        raise UserError(f"{output} exists; pass --force to replace it")


def write(migration: Migration, output: Path) -> None:
    """Whole or not at all: a temporary file beside the recipe, then renamed over it."""
    text = recipe_text(migration, output)
    write_atomic(output, text)
