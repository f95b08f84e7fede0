"""axolotl's `datasets:` and `pretraining_dataset:` entries -> sft data sources (sft/migrate/axolotl.py maps the
rest of the config)."""

# Dataset `type` -> sft format.
DATASET_TYPES = {"alpaca": "instruction", "alpaca:chat": "instruction", "alpaca:phi": "instruction",
                 "chat_template": "chat", "sharegpt": "sharegpt", "completion": "text", "pretrain": "text"}
# How each instruction type is rendered (sft's instruction_template): the Alpaca prompt, or a user and an assistant
# turn through the chat template (alpaca:phi is Phi-3's chat format, alpaca:chat a USER:/ASSISTANT: chat).
INSTRUCTION_TEMPLATES = {"alpaca": "alpaca", "alpaca:chat": "chat", "alpaca:phi": "chat"}


def message_columns(entry: dict) -> tuple[str, str, str]:
    """(messages column, role field, content field) of a chat_template or sharegpt dataset (axolotl's sharegpt
    type reads ShareGPT's from/value turns)."""
    mappings = entry.get("message_property_mappings") or {}
    role, content = ("from", "value") if entry.get("type") == "sharegpt" else ("role", "content")
    role = mappings.get("role", entry.get("message_field_role", role))
    content = mappings.get("content", entry.get("message_field_content", content))
    return entry.get("field_messages", "messages"), role, content


def dataset_source(entry: dict, where: str, migration) -> dict | None:
    """One `datasets:` entry as an sft source {path, name, split, data_files, format, column_mapping}, or None."""
    if not isinstance(entry, dict) or not entry.get("path"):
        migration.skip(where, "each entry needs a path")
        return None
    kind = entry.get("type", "alpaca")
    if isinstance(kind, dict) or kind not in DATASET_TYPES:
        migration.skip(where, f"axolotl prompt format {kind!r} has no sft equivalent; convert the data to chat "
                              "(messages), sharegpt, instruction, prompt/completion or text rows")
        return None
    source = {"path": entry["path"], "format": DATASET_TYPES[kind]}
    if entry.get("ds_type") and entry.get("data_files"):  # e.g. path: my/folder, ds_type: json, data_files: x.jsonl
        source.update(path=entry["ds_type"], data_files=entry["data_files"])
    elif entry.get("data_files"):  # files of a Hub dataset repo (or folder): only those are read
        source["data_files"] = entry["data_files"]
    for theirs, ours in (("name", "name"), ("split", "split")):
        if entry.get(theirs):
            source[ours] = entry[theirs]
    if kind in ("chat_template", "sharegpt"):
        column, role, content = message_columns(entry)
        if kind == "sharegpt" and "field_messages" not in entry:
            column = "conversations"
        if (role, content) == ("from", "value"):
            source["format"], target = "sharegpt", "conversations"
        elif (role, content) == ("role", "content"):
            source["format"], target = "chat", "messages"
        else:
            migration.skip(where, f"messages with fields {role!r}/{content!r}: sft reads role/content (chat) or "
                                  "from/value (sharegpt); rename them in the data")
            return None
        if column != target:
            source["column_mapping"] = {column: target}
        roles = entry.get("roles_to_train")
        if roles not in (None, ["assistant"], ["gpt"]):
            migration.skip(f"{where}.roles_to_train", f"{roles}: sft trains assistant turns (loss_mode: assistant) "
                                                      "or everything (loss_mode: all)")
        if entry.get("train_on_eos") not in (None, "turn"):
            migration.skip(f"{where}.train_on_eos", "sft trains the end-of-turn token of every trained turn")
    column = entry.get("text_column" if kind == "pretrain" else "field", "text")
    if kind in ("completion", "pretrain") and column != "text":
        source["column_mapping"] = {column: "text"}
    handled = {"path", "type", "ds_type", "data_files", "name", "split", "field_messages", "message_property_mappings",
               "message_field_role", "message_field_content", "roles_to_train", "train_on_eos", "field", "text_column",
               "conversation"}
    for key in entry:
        if key not in handled:
            migration.skip(f"{where}.{key}", "no sft equivalent for this dataset option")
    return source


def datasets(data: dict, migration) -> None:
    """`datasets:`, or `pretraining_dataset:` (text rows, which axolotl streams) when there is no `datasets:`."""
    key = "datasets" if "datasets" in data else "pretraining_dataset"
    if "datasets" in data and "pretraining_dataset" in data:
        migration.skip("pretraining_dataset", "datasets is set too; sft trains on the datasets listed there")
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    if key == "pretraining_dataset":
        entries = [{"path": e, "type": "pretrain"} if isinstance(e, str) else {"type": "pretrain", **e}
                   for e in entries]
    sources = [s for n, entry in enumerate(entries) if (s := dataset_source(entry, f"{key}[{n}]", migration))]
    migration.sources(key, sources)
    kinds = {e.get("type", "alpaca") for e in entries if isinstance(e, dict)} & set(INSTRUCTION_TEMPLATES)
    renderings = {INSTRUCTION_TEMPLATES[k] for k in kinds}
    if renderings == {"alpaca"}:
        migration.set("datasets[].type: alpaca", {"instruction_template": "alpaca"},
                      "the Alpaca prompt, as axolotl renders it")
    elif renderings == {"chat"}:
        migration.note(f"datasets[].type: {'/'.join(sorted(kinds))}", "instruction rows as a user and an assistant "
                                                                     "turn through the chat template (sft's default)")
    elif renderings:
        migration.skip("datasets[].type", f"{', '.join(sorted(kinds))}: sft renders all instruction rows of a recipe "
                                          "one way (instruction_template: alpaca or chat); split the run in two")
    conversations = {e["conversation"] for e in entries if isinstance(e, dict) and e.get("conversation")}
    if conversations:
        conversation_template(sorted(conversations), data, migration)


def conversation_template(names: list[str], data: dict, migration) -> None:
    """sharegpt's `conversation:` (a FastChat template name) renders those rows; sft renders with one template."""
    from sft.templates.chat import BUILTIN_TEMPLATES

    [name, *others] = names
    if others or name not in BUILTIN_TEMPLATES:
        migration.skip("datasets[].conversation", f"{', '.join(names)}: set chat_template to the model's format "
                                                  "(a built-in name or a .jinja file)")
    elif data.get("chat_template") not in (None, name):
        migration.skip("datasets[].conversation", f"{name}: chat_template {data['chat_template']} is set too; sft "
                                                  "renders every row with one template")
    else:
        migration.set("datasets[].conversation", {"chat_template": name}, "sft's built-in of the same name")
