"""The recipe's data: sources (local files or Hub datasets, single or mixed), formats, validation, the eval split,
and - through sft.masks - the tokenized datasets the trainer receives. `sft train`, `sft preview` and `sft check`
all go through `prepare_data`.

Every example is normalised into one of three shapes, whatever it looked like on disk:
  {"messages": [{"role", "content", ...}, ...]}   chat, ShareGPT, and instruction data rendered as chat
  {"prompt": str, "completion": str}              raw prompt/completion and Alpaca-style instruction data
  {"text": str}                                   continued pre-training
Each bad row is named by file and line (JSON Lines) or row, with the reason.
"""

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError

FORMATS = ("chat", "sharegpt", "instruction", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool", "developer", "ipython", "function")
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
# alignment-handbook's `dataset_mixture`, plus sft's per-source keys (format, column_mapping, data_files, data_dir)
HANDBOOK_KEYS = ("datasets", "test_split_size", "seed")
HANDBOOK_ENTRY_KEYS = ("id", "config", "split", "columns", "weight", "format", "column_mapping", "data_files",
                       "data_dir")


# ---------------------------------------------------------------------------------------------------------------
# Sources


@dataclass
class Source:
    """One dataset of the recipe, however it was written (dataset_name, a `datasets:` or `dataset_mixture` entry)."""

    label: str  # how messages name it: the recipe key it came from
    path: str
    name: str | None = None
    split: str = "train"
    data_files: object = None
    data_dir: str | None = None
    columns: list | None = None
    fraction: float | None = None  # TRL: target share of the mixture
    weight: float | None = None  # alignment-handbook: share of this dataset that is kept
    format: str | None = None
    column_mapping: dict | None = None


def local_data_files(name: str) -> list[Path] | None:
    """The files a local `dataset_name` stands for (a file, a folder, or a glob), or None if it is not local."""
    path = Path(name).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_BUILDERS and p.is_file())
        if not files:
            raise UserError(f"{name}: folder has no data files ({', '.join(LOCAL_BUILDERS)})")
        return files
    if any(ch in name for ch in "*?["):
        files = sorted(Path().glob(name)) if not path.is_absolute() else sorted(Path("/").glob(name.lstrip("/")))
        files = [f for f in files if f.is_file()]
        if not files:
            raise UserError(f"{name}: no files match this pattern")
        return files
    if path.suffix in LOCAL_BUILDERS or name.startswith((".", "/", "~")):
        raise UserError(f"{name}: data file not found")
    return None


def check_json_file(path: Path) -> list[int] | None:
    """Line numbers of the rows of a JSON Lines file (None for a JSON array), naming the file and line of the first
    malformed row (datasets' own errors name neither)."""
    with path.open("rb") as handle:
        first = handle.read(1).lstrip()
        handle.seek(0)
        if path.suffix == ".json" and first == b"[":
            from sft.errors import not_utf8

            raw = handle.read()
            try:
                json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise not_utf8(path, raw, err.start) from None
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
            return None
        lines = []
        for number, line in utf8_lines(handle, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            lines.append(number)
        return lines


def utf8_lines(handle, path: Path):
    """(line number, line) of a binary file handle; a line that is not UTF-8 fails naming file, line and column."""
    from sft.errors import not_utf8

    for number, line in enumerate(handle, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise not_utf8(path, line, err.start, number) from None
        yield number, line


def load_local_file(path: Path):
    """(dataset, where each row is: "file:line" for JSON Lines, "file row N" otherwise)."""
    from datasets import load_dataset

    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(f"{path}: unsupported file type (use {', '.join(LOCAL_BUILDERS)})")
    if path.stat().st_size < 65536 and not path.read_bytes().strip():  # datasets fails with an empty message
        raise UserError(f"{path}: the dataset is empty")
    lines = check_json_file(path) if builder == "json" else None
    if builder in ("csv", "text"):
        with path.open("rb") as handle:
            for _ in utf8_lines(handle, path):
                pass
    try:
        dataset = load_dataset(builder, data_files=[str(path)], split="train")
    except Exception as err:  # datasets wraps parser errors in its own types; name the file instead
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise UserError(f"{path}: could not read as {builder}: {reason}") from err
    if lines is not None and len(lines) == len(dataset):
        return dataset, [f"{path}:{line}" for line in lines]
    return dataset, [f"{path} row {i + 1}" for i in range(len(dataset))]


def concatenated(parts: list[tuple], where):
    """One dataset from several files' (dataset, wheres) parts, their column types unified where they differ."""
    from datasets import concatenate_datasets

    if len(parts) == 1:
        return parts[0][0]
    datasets = [parts[0][0]]
    try:
        datasets += [p[0].cast(parts[0][0].features) for p in parts[1:]]
        return concatenate_datasets(datasets)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: files have different columns ({str(err).splitlines()[0]}); list them as "
                        "separate sources") from err


def load_source(name: str, config: str | None = None, split: str = "train", data_files=None, data_dir=None):
    """One source: a local file/folder/glob, or anything `datasets.load_dataset` accepts (a Hub name)."""
    return concatenated(load_source_parts(name, config, split, data_files, data_dir), name)


def load_source_parts(name: str, config=None, split="train", data_files=None, data_dir=None, label=None):
    """[(dataset, where each row is)]: one part per local file (file, folder or glob), or one through
    `datasets.load_dataset` (a Hub name, or a builder such as json with data_files)."""
    from datasets import load_dataset

    label = label or name
    files = local_data_files(name) if data_files is None else None
    if files is None and data_files is not None and name in set(LOCAL_BUILDERS.values()):
        listed = [data_files] if isinstance(data_files, str) else data_files
        if isinstance(listed, list) and all(isinstance(f, str) for f in listed):
            files = [f for entry in listed for f in (local_data_files(entry) or [Path(entry)])]
    if files is not None:
        return [load_local_file(f) for f in files]
    try:
        dataset = load_dataset(name, name=config, split=split, data_files=data_files, data_dir=data_dir)
    except FileNotFoundError as err:
        raise UserError(f"{label}: dataset {name} not found locally or on the Hub "
                        f"({str(err).splitlines()[0]})") from err
    except (ValueError, ConnectionError, OSError) as err:
        raise UserError(f"{label}: {name}: {str(err).splitlines()[0]}") from err
    return [(dataset, [f"{name}[{split}] row {i + 1}" for i in range(len(dataset))])]


# ---------------------------------------------------------------------------------------------------------------
# Formats


def detect_format(columns, forced: str | None = None, source: str = "data", text_field: str = "text") -> str:
    if forced:
        if forced not in FORMATS:
            raise UserError(f"{source}: format must be one of {', '.join(FORMATS)}; got {forced!r}")
        return forced
    cols = set(columns)
    if "messages" in cols:
        return "chat"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "instruction"
    if {"prompt", "completion"} <= cols or {"prompt", "response"} <= cols:
        return "prompt_completion"
    if text_field in cols:
        return "text"
    raise UserError(
        f"{source}: cannot tell the format from columns {sorted(cols)}; expected messages, conversations, "
        "instruction/output, prompt/completion or text (or set dataset_format and column_mapping)"
    )


MEDIA_PARTS = {"image": "image", "image_url": "image", "video": "video", "audio": "audio", "input_audio": "audio"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def drop_none(value):
    """Remove None-valued keys inside tool calls: Arrow gives every row every key another row has."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def check_message(message, number: int) -> dict:
    """One chat message, validated: a known role, string content, well-formed tool calls."""
    if not isinstance(message, dict):
        raise ValueError(f"message {number} must be an object with role and content, got {type(message).__name__}")
    message = {k: v for k, v in message.items() if v is not None}
    if "role" not in message and "from" in message:  # ShareGPT turns inside a messages column
        message = {"role": SHAREGPT_ROLES.get(message["from"], message["from"]), "content": message.get("value")}
    role = message.get("role")
    if role not in ROLES:
        hint = " (ShareGPT data? use a conversations column or dataset_format: sharegpt)" if role in (
            "human", "gpt") else ""
        raise ValueError(f"message {number} has unknown role {role!r}; expected one of {', '.join(ROLES)}{hint}")
    content = message.get("content")
    if isinstance(content, list):  # text parts only: [{"type": "text", "text": ...}], kept for templates that want them
        media = [MEDIA_PARTS[p.get("type")] for p in content if isinstance(p, dict) and p.get("type") in MEDIA_PARTS]
        if media:
            raise ValueError(f"message {number} has {media[0]} content; vision (and audio) data is not supported "
                             "(text parts only)")
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ValueError(f"message {number} has non-text content parts; only text is supported")
        message["content"] = [{"type": "text", "text": p["text"]} for p in content]
        content = "".join(p["text"] for p in content)
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message {number} ({role}) content must be a string, got {type(content).__name__}")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise ValueError(f"message {number}: tool_calls must be a list on an assistant message")
        message["tool_calls"] = [check_tool_call(call, number) for call in calls]
        if not message["tool_calls"]:
            del message["tool_calls"]
    if role == "assistant" and not (content or "").strip() and not message.get("tool_calls"):
        raise ValueError(f"message {number} (assistant) has empty content")
    if content is None and role != "assistant":
        raise ValueError(f"message {number} ({role}) has no content")
    return message


def check_tool_call(call, number: int) -> dict:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"message {number}: each tool call needs a function name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):  # templates expect a mapping (they write it with tojson)
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"message {number}: tool call arguments are not valid JSON") from None
    return {"type": "function", "function": {"name": function["name"], "arguments": drop_none(arguments or {})}}


def check_messages(messages, key: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    return [check_message(m, n) for n, m in enumerate(messages, start=1)]


def template_inputs(row: dict) -> dict:
    """A conversation's own `tools` and `chat_template_kwargs` (e.g. enable_thinking), passed to its template as
    TRL passes them."""
    out = {}
    if row.get("tools"):
        out["tools"] = drop_none(row["tools"])  # Arrow gives every tool every key another tool has
    kwargs = row.get("chat_template_kwargs")
    if kwargs:
        if not isinstance(kwargs, dict):
            raise ValueError("'chat_template_kwargs' must be a mapping, e.g. {\"enable_thinking\": false}")
        out["chat_template_kwargs"] = drop_none(kwargs)
    return out


def normalise(row: dict, fmt: str, instruction_template: str = "chat") -> dict:
    """One raw row -> messages / prompt+completion / text. Raises ValueError with the reason for a bad row."""
    if fmt == "chat":
        return {"messages": check_messages(row.get("messages"), "messages"), **template_inputs(row)}
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError("'conversations' must be a non-empty list")
        messages = []
        for number, turn in enumerate(turns, start=1):
            sender = turn.get("from") if isinstance(turn, dict) else turn
            role = SHAREGPT_ROLES.get(sender) if isinstance(turn, dict) else None
            if role is None:
                raise ValueError(f"turn {number} has unknown 'from' {sender!r} (expected one of "
                                 f"{', '.join(SHAREGPT_ROLES)})")
            messages.append({"role": role, "content": turn.get("value")})
        return {"messages": check_messages(messages, "conversations")}
    if fmt == "instruction":
        instruction, extra, output = row.get("instruction"), row.get("input") or "", row.get("output")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("'instruction' is missing or empty")
        if not isinstance(output, str) or not output.strip():
            raise ValueError("'output' is missing or empty")
        if instruction_template == "alpaca":
            prompt = ALPACA_PROMPT.format(
                with_input=", paired with an input that provides further context" if extra else "",
                instruction=instruction, input_block=f"### Input:\n{extra}\n\n" if extra else "",
            )
            return {"prompt": prompt, "completion": output}
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}
    if fmt == "prompt_completion":
        prompt = row.get("prompt")
        completion = row.get("completion", row.get("response"))
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
            messages = check_messages(prompt + completion, "prompt + completion")
            return {"messages": messages, "_completion_turns": len(completion), **template_inputs(row)}
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError("'prompt' and 'completion' must both be strings (or both lists of messages)")
        if not completion.strip():
            raise ValueError("'completion' is empty")
        return {"prompt": prompt, "completion": completion}
    if fmt == "text":
        text = row.get("text")
        if not isinstance(text, str) or not text:
            raise ValueError("'text' is missing or empty")
        return {"text": text}
    raise ValueError(f"unknown format {fmt!r}")


def default_loss_mode(fmt: str) -> str:
    return {"chat": "assistant", "sharegpt": "assistant", "text": "all"}.get(fmt, "completion")


# ---------------------------------------------------------------------------------------------------------------
# The recipe's sources


def _closest(key: str, candidates) -> str:
    from sft.recipe.coercion import closest

    return closest(key, candidates, otherwise=f" (valid keys: {', '.join(candidates)})")


def check_source_values(source: Source, where: str) -> Source:
    """Per-source values checked; `where` prefixes each key in messages ("r.yaml: datasets[0]." or "r.yaml: ")."""
    if source.format is not None and source.format not in FORMATS:
        raise UserError(f"{where}format: must be one of {', '.join(FORMATS)}; got {source.format!r}")
    if source.column_mapping is not None and not (
            isinstance(source.column_mapping, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in source.column_mapping.items())):
        raise UserError(f"{where}column_mapping: must map source column names to format column names, e.g. "
                        "{question: prompt, answer: completion}")
    if source.columns is not None and not (isinstance(source.columns, list)
                                           and all(isinstance(c, str) for c in source.columns)):
        raise UserError(f"{where}columns: must be a list of column names")
    for key in ("weight", "fraction"):
        value = getattr(source, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise UserError(f"{where}{key}: must be a positive number; got {value!r}")
    if source.weight is not None and source.weight > 1:
        raise UserError(f"{where}weight: is the share of this dataset kept, at most 1; got {source.weight}")
    return source


def recipe_sources(recipe) -> tuple[list[Source], float | None, int, list[str]]:
    """(sources, test_split_size, seed, notes) from dataset_name, `datasets:` (TRL) or `dataset_mixture`
    (alignment-handbook)."""
    from sft.recipe.coercion import resolve_path

    notes = []
    handbook, trl_entries = recipe.sft.dataset_mixture, list(recipe.mixture.datasets or [])
    test_size, seed = recipe.mixture.test_split_size, recipe.training.seed
    if handbook and trl_entries:
        raise UserError(f"{recipe.source}: both 'datasets' (TRL) and 'dataset_mixture' (alignment-handbook) are set; "
                        "keep one")
    sources = []
    if handbook:
        if not isinstance(handbook, dict):
            raise UserError(f"{recipe.source}: dataset_mixture must be a mapping with datasets, test_split_size, seed")
        for key in handbook:
            if key not in HANDBOOK_KEYS:
                raise UserError(f"{recipe.source}: dataset_mixture: unknown key '{key}'{_closest(key, HANDBOOK_KEYS)}")
        entries = handbook.get("datasets")
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{recipe.source}: dataset_mixture.datasets must be a non-empty list of {{id, config, "
                            "split, columns, weight}}")
        for number, entry in enumerate(entries):
            where = f"{recipe.source}: dataset_mixture.datasets[{number}]: "
            if not isinstance(entry, dict) or not entry.get("id"):
                raise UserError(f"{where}each entry needs an 'id' (a data file, folder, glob or Hub dataset)")
            for key in entry:
                if key not in HANDBOOK_ENTRY_KEYS:
                    raise UserError(f"{where}unknown key '{key}'{_closest(key, HANDBOOK_ENTRY_KEYS)}")
            sources.append(check_source_values(Source(
                label=f"dataset_mixture.datasets[{number}] ({entry['id']})", path=entry["id"],
                name=entry.get("config"), split=entry.get("split") or "train", data_files=entry.get("data_files"),
                data_dir=entry.get("data_dir"), columns=entry.get("columns"), weight=entry.get("weight"),
                format=entry.get("format"), column_mapping=entry.get("column_mapping")), where))
        if handbook.get("test_split_size") is not None:
            test_size = handbook["test_split_size"]
        if handbook.get("seed") is not None:
            seed = handbook["seed"]
    elif trl_entries:
        for number, entry in enumerate(trl_entries):
            values = dataclasses.asdict(entry) if dataclasses.is_dataclass(entry) else dict(entry)
            sources.append(check_source_values(Source(
                label=f"datasets[{number}] ({values['path']})", path=values["path"], name=values.get("name"),
                split=values.get("split") or "train", data_files=values.get("data_files"),
                data_dir=values.get("data_dir"), columns=values.get("columns"), fraction=values.get("fraction"),
                format=values.get("format"), column_mapping=values.get("column_mapping")),
                f"{recipe.source}: datasets[{number}]."))
        fractions = [s.fraction for s in sources]
        if any(f is not None for f in fractions) and any(f is None for f in fractions):
            raise UserError(f"{recipe.source}: datasets: set 'fraction' for every dataset of the mixture or for none")
    elif recipe.script.dataset_name:
        sources.append(check_source_values(Source(
            label=recipe.script.dataset_name, path=recipe.script.dataset_name, name=recipe.script.dataset_config,
            split=recipe.script.dataset_train_split, column_mapping=recipe.sft.column_mapping), f"{recipe.source}: "))
    else:
        raise UserError(f"{recipe.source}: missing key 'dataset_name' (a data file, folder, glob or Hub dataset), or "
                        "a mixture under 'datasets' or 'dataset_mixture'")
    if (handbook or trl_entries) and recipe.script.dataset_name:
        notes.append(f"dataset_name {recipe.script.dataset_name} is ignored: the mixture lists the data")
    for source in sources:
        source.path = resolve_path(source.path, recipe.base_dir)
        if isinstance(source.data_files, str):
            source.data_files = resolve_path(source.data_files, recipe.base_dir)
        elif isinstance(source.data_files, list):
            source.data_files = [resolve_path(f, recipe.base_dir) for f in source.data_files]
    return sources, test_size, seed, notes


@dataclass
class SourceRows:
    """One source, normalised: JSON examples with where they came from, and the rows that failed."""

    source: Source
    format: str
    rows: int
    examples: list = field(default_factory=list)  # json strings
    wheres: list = field(default_factory=list)
    bad: list = field(default_factory=list)  # (where, reason)
    chat: bool = False  # some example goes through the chat template


def read_source(source: Source, recipe, split: str | None = None) -> SourceRows:
    parts = load_source_parts(source.path, source.name, split or source.split, source.data_files, source.data_dir,
                              source.label)
    result = None
    for raw, wheres in parts:
        raw, fmt = prepare_columns(raw, source, recipe)
        part = normalise_rows(raw, wheres, fmt, source, recipe.sft.instruction_template)
        if result is None:
            result = part
        elif part.format != result.format:
            raise UserError(f"{source.label}: {wheres[0].split(' row ')[0]} holds {part.format} data and the files "
                            f"before it {result.format}; list them as separate sources")
        else:
            result.rows += part.rows
            result.examples += part.examples
            result.wheres += part.wheres
            result.bad += part.bad
            result.chat = result.chat or part.chat
    if result.rows == 0:
        raise UserError(f"{source.label}: the dataset is empty")
    if not result.examples:
        raise UserError(no_row_fits(result, raw.column_names))
    return result


def no_row_fits(result: SourceRows, columns: list[str]) -> str:
    """Every row is bad: most often a forced format (dataset_format, format) that the data does not have."""
    where, reason = result.bad[0]
    try:
        detected = detect_format(columns)
    except UserError:
        detected = None
    if detected and detected != result.format:
        return (f"{where}: {reason}; none of the {result.rows} rows is {result.format} data; the data looks like "
                f"{detected} (columns {', '.join(columns)}): remove dataset_format or set it to {detected}")
    return f"{where}: {reason}; none of the {result.rows} rows can be used: fix the data"


def prepare_columns(raw, source: Source, recipe):
    """(dataset with the format's column names, format) for one file or dataset of a source."""
    if source.columns:
        missing = [c for c in source.columns if c not in raw.column_names]
        if missing:
            raise UserError(f"{source.label}: columns {missing} not found; the data has {raw.column_names}")
        raw = raw.select_columns(source.columns)
    mapping = dict(source.column_mapping or {})
    text_field = recipe.training.dataset_text_field or "text"
    if text_field != "text" and text_field in raw.column_names and "text" not in raw.column_names:
        mapping.setdefault(text_field, "text")
    if mapping:
        missing = [c for c in mapping if c not in raw.column_names]
        if missing:
            raise UserError(f"{source.label}: column_mapping names columns {missing} that the data does not have "
                            f"(it has {raw.column_names})")
        raw = raw.rename_columns(mapping)
    return raw, detect_format(raw.column_names, source.format or recipe.sft.dataset_format, source.label)


def read_sources(sources: list[Source], recipe) -> list[SourceRows]:
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    shown = is_progress_bar_enabled()
    disable_progress_bar()  # reading files is quick; a bad file should read as one error line
    try:
        return [read_source(source, recipe) for source in sources]
    finally:
        if shown:
            enable_progress_bar()


def normalise_rows(raw, wheres: list[str], fmt: str, source: Source, instruction_template: str = "chat"):
    """Every row of a raw dataset normalised to a JSON example, or recorded as bad with where and why."""
    result = SourceRows(source, fmt, len(raw))
    position = 0
    for batch in raw.iter(batch_size=1000):
        for values in zip(*batch.values()):
            where = wheres[position]
            position += 1
            try:
                example = normalise(dict(zip(batch, values)), fmt, instruction_template)
            except ValueError as err:
                result.bad.append((where, str(err)))
                continue
            result.chat = result.chat or "messages" in example
            # key order kept: templates write mappings (tools, tool-call arguments) in the order they are given
            result.examples.append(json.dumps(example, ensure_ascii=False))
            result.wheres.append(where)
    return result


def mix(parts: list[SourceRows], seed: int) -> list[tuple[str, str, int]]:
    """[(example, where, source index)] after each source's weight (alignment-handbook: a seeded sample of that
    share of the source) or fraction (TRL: shares of the mixture, no source oversampled, first rows kept)."""
    chosen = []
    fractions = [p.source.fraction for p in parts]
    if all(f is not None for f in fractions):
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(p.examples) / w for p, w in zip(parts, weights) if w > 0)
        counts = [round(w * total) for w in weights]
    else:
        counts = [len(p.examples) for p in parts]
    for index, (part, count) in enumerate(zip(parts, counts)):
        rows = list(range(len(part.examples)))
        if part.source.weight is not None:
            random.Random(seed).shuffle(rows)
            rows = sorted(rows[: int(len(rows) * part.source.weight)])
        chosen += [(part.examples[i], part.wheres[i], index) for i in rows[:count]]
    return chosen


def test_size_value(value, n: int, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: test_split_size must be a fraction in (0, 1) or a number of examples; got {value!r}")
    if value >= 1:
        if float(value) != int(value):
            raise UserError(f"{where}: test_split_size {value} is neither a fraction below 1 nor a whole number")
        value = int(value)
        if value >= n:
            raise UserError(f"{where}: test_split_size {value} leaves nothing to train on ({n} unique examples)")
    return value


def split_eval(rows, test_size, seed, where):
    """Exact duplicates removed first (so no example is both trained and evaluated on), then a seeded split."""
    seen, unique = set(), []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique.append(row)
    duplicates = len(rows) - len(unique)
    size = test_size_value(test_size, len(unique), where)
    parts = as_dataset(unique).train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"], duplicates


def as_dataset(rows):
    """(example JSON, where, source index) rows as a dataset."""
    from datasets import Dataset

    return Dataset.from_dict({"example": [r[0] for r in rows], "where": [r[1] for r in rows],
                              "source": [r[2] for r in rows]})


def decoded(dataset):
    """A dataset of example JSON strings as one of normalised rows (dicts)."""
    from datasets import Dataset

    return Dataset.from_list([json.loads(e) for e in dataset["example"]])


# ---------------------------------------------------------------------------------------------------------------
# Everything the trainer receives


@dataclass
class PreparedData:
    """What the trainer receives (train/eval: input_ids and labels), and what `sft check` reports."""

    train: object
    eval: object
    stats: dict
    problems: list
    notes: list
    train_full: object = None  # with per-example columns (where, length, trained, ...) for preview and check
    eval_examples: object = None  # the eval split before tokenizing (JSON examples)

    @property
    def eval_rows(self):
        """The eval split as normalised rows (dicts), or None: what generation samples and metrics read."""
        if self.eval_examples is None or len(self.eval_examples) == 0:
            return None
        return decoded(self.eval_examples)

    def summary(self) -> str:
        s = self.stats
        share = s["trained_tokens"] / max(s["tokens"], 1)
        formats = ", ".join(sorted({src["format"] for src in s["sources"]}))
        eval_part = f"; eval split {s['eval_examples']} examples" if s.get("eval_examples") else ""
        dupes = f", {s['duplicates_removed']} exact duplicates removed" if s.get("duplicates_removed") else ""
        return (f"data: {s['kept']} examples ({formats}, loss on {s['loss_mode']}), {s['tokens']:,} tokens, "
                f"{share:.0%} trained; {s['dropped_truncated']} dropped (all trained tokens past max_length), "
                f"{s['truncated']} truncated, {s['skipped_bad']} bad rows skipped{dupes}{eval_part}; tokenized data "
                + {"hit": "reused from the cache", "miss": "cached", "off": "not cached"}[s["cache"]])


def recipe_tokenizer(recipe):
    """The run's tokenizer with the recipe's chat template set, as `sft train` loads it (no model is loaded)."""
    from sft.templates.chat import apply_template
    from sft.model import check_model_source, load_tokenizer

    check_model_source(recipe)
    tokenizer = load_tokenizer(recipe)
    apply_template(tokenizer, recipe)
    return tokenizer


def prepare_data(recipe, tokenizer, limit: int | None = None, strict: bool = True) -> PreparedData:
    """Read every source, validate and normalise every row, split off eval data, then render, tokenize and mask.

    strict: raise the first problem as a UserError (training); otherwise return the problems (sft check).
    limit: only the first `limit` training examples are tokenized, and nothing is cached (sft preview)."""
    from sft.templates.chat import check_has_template
    from sft.masks import FALLBACKS, column, generation_stop_tokens, plan_masks, split_note, summarise, tokenize_all
    from sft.streaming import prepare_streaming, wants_streaming

    if wants_streaming(recipe):  # read, checked and masked as training reads it
        return prepare_streaming(recipe, tokenizer, limit=limit, strict=strict)
    notes = []
    loss_mode = recipe.sft.loss_mode  # TRL's loss switches were read as loss modes by sft/recipe/finalize.py
    if recipe.sft.mask_fallback not in FALLBACKS:
        raise UserError(f"{recipe.source}: mask_fallback must be one of {', '.join(FALLBACKS)}")
    sources, test_size, seed, source_notes = recipe_sources(recipe)
    notes += source_notes
    parts = read_sources(sources, recipe)
    problems, bad = [], [b for part in parts for b in part.bad]
    rows = mix(parts, seed)

    duplicates = 0
    if test_size is not None:
        train_set, eval_set, duplicates = split_eval(rows, test_size, seed, recipe.source)
    else:
        train_set, eval_set = as_dataset(rows), None
        if getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy) not in ("no", None):
            train_set, eval_set, duplicates = eval_split_from_source(recipe, sources, rows, bad)
    if any(p.chat for p in parts):
        check_has_template(tokenizer, recipe.source)
    # Built once (both tokenize_all calls use it): the template, the model's generation stop tokens, the kwargs.
    plan = plan_masks(tokenizer, loss_mode, stop_tokens=generation_stop_tokens(recipe.model.model_name_or_path,
                                                                               tokenizer),
                      template_kwargs=recipe.sft.chat_template_kwargs)
    if limit is not None:
        train_set = train_set.select(range(min(limit, len(train_set))))
        eval_set = None
    if bad and not recipe.sft.skip_bad_rows:
        from sft.masks import describe_bad_rows

        problems.append(describe_bad_rows(bad))

    settings = dict(tokenizer=tokenizer, loss_mode=loss_mode, max_length=recipe.training.max_length,
                    truncation_mode=recipe.training.truncation_mode, mask_fallback=recipe.sft.mask_fallback,
                    use_cache=recipe.sft.data_cache and limit is None, plan=plan)
    tokenized = tokenize_all(train_set, source="training data", **settings)
    summary_args = (recipe.sft.skip_bad_rows, recipe.sft.max_dropped_fraction, recipe.training.max_length)
    keep, stats, train_problems = summarise(tokenized, "training data", *summary_args)
    problems += train_problems
    notes += [note for note in [split_note("training data", stats)] if note]
    eval_final = None
    if eval_set is not None and len(eval_set):
        eval_tokenized = tokenize_all(eval_set, source="eval data", **settings)
        eval_keep, eval_stats, eval_problems = summarise(eval_tokenized, "eval data", *summary_args)
        problems += eval_problems
        notes += [note for note in [split_note("eval data", eval_stats)] if note]
        eval_final = eval_tokenized.full.select(eval_keep).select_columns(["input_ids", "labels"])
        stats["eval_examples"] = len(eval_keep)
    full = tokenized.full.select(keep)
    kept_sources = column(full, "source")
    stats.update({
        "loss_mode": loss_mode or ("/".join(sorted({default_loss_mode(p.format) for p in parts}))),
        "skipped_bad": stats["skipped_bad"] + len(bad),
        "duplicates_removed": duplicates,
        "sources": [{"name": p.source.label, "format": p.format, "rows": p.rows, "bad": len(p.bad),
                     "examples": kept_sources.count(index)} for index, p in enumerate(parts)],
    })
    if strict and problems:
        raise UserError(problems[0])
    return PreparedData(full.select_columns(["input_ids", "labels"]), eval_final, stats, problems, notes, full,
                        eval_set)


def eval_split_from_source(recipe, sources, rows, bad):
    """Evaluation requested without test_split_size: the source's own `dataset_test_split` split, without the
    examples it shares with the training rows."""
    name = recipe.script.dataset_test_split
    if len(sources) != 1 or local_data_files(sources[0].path) is not None:
        strategy = getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy)
        raise UserError(f"{recipe.source}: eval_strategy is {strategy} but there is no eval "
                        "data; set test_split_size (a fraction such as 0.05, or a number of examples)")
    part = read_source(sources[0], recipe, split=name)
    bad += part.bad
    eval_examples = set(part.examples)
    train_rows = [r for r in rows if r[0] not in eval_examples]
    eval_rows = [(e, w, 0) for e, w in zip(part.examples, part.wheres)]
    return as_dataset(train_rows), as_dataset(eval_rows), len(rows) - len(train_rows)


def load_recipe_data(recipe):
    """(train, eval or None, info) as datasets of normalised rows (dicts), before tokenizing."""
    sources, test_size, seed, _ = recipe_sources(recipe)
    parts = read_sources(sources, recipe)
    bad = [b for part in parts for b in part.bad]
    if bad and not recipe.sft.skip_bad_rows:
        from sft.masks import describe_bad_rows

        raise UserError(describe_bad_rows(bad))
    rows = mix(parts, seed)
    if test_size is not None:
        train, evaluation, _ = split_eval(rows, test_size, seed, recipe.source)
        return decoded(train), decoded(evaluation), {"format": parts[0].format, "skipped": len(bad)}
    return decoded(as_dataset(rows)), None, {"format": parts[0].format, "skipped": len(bad)}
