"""Data in: sources (local files or Hub datasets, single or mixed), format detection, and normalisation.

Every example leaves this module in one of three shapes, whatever it looked like on disk:
  {"messages": [{"role", "content"}, ...]}      chat, ShareGPT, and instruction data rendered as chat
  {"prompt": str, "completion": str}            raw prompt/completion and Alpaca-style instruction data
  {"text": str}                                 continued pre-training
"""

import json
from pathlib import Path

from sft.errors import UserError

FORMATS = ("chat", "sharegpt", "instruction", "prompt_completion", "text")
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


# ---------------------------------------------------------------------------------------------------------------
# Sources


def local_data_files(name: str) -> list[Path] | None:
    """The files a local `dataset_name` stands for (a file, a folder, or a glob), or None if it is not local."""
    path = Path(name)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_BUILDERS)
        if not files:
            raise UserError(f"{name}: folder has no data files ({', '.join(LOCAL_BUILDERS)})")
        return files
    if any(ch in name for ch in "*?["):
        files = sorted(Path().glob(name)) if not path.is_absolute() else sorted(Path("/").glob(name.lstrip("/")))
        if not files:
            raise UserError(f"{name}: no files match this pattern")
        return files
    if path.suffix in LOCAL_BUILDERS or name.startswith((".", "/", "~")):
        raise UserError(f"{name}: data file not found")
    return None


def load_local(files: list[Path], split: str = "train"):
    from datasets import load_dataset

    suffixes = {f.suffix for f in files}
    if len(suffixes) > 1:
        raise UserError(f"{files[0].parent}: mixes file types {sorted(suffixes)}; list them as separate sources")
    builder = LOCAL_BUILDERS[files[0].suffix]
    if builder == "json":
        for f in files:
            check_json_file(f)
    try:
        dataset = load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # datasets wraps parser errors in its own types; name the file instead
        raise UserError(f"{files[0]}: could not read as {builder}: {str(err).splitlines()[0]}") from err
    return dataset


def check_json_file(path: Path) -> None:
    """Name the file and line of the first malformed JSON Lines row (datasets' own errors name neither)."""
    with path.open("rb") as handle:
        first = handle.read(1).lstrip()
        handle.seek(0)
        if path.suffix == ".json" and first == b"[":
            try:
                json.load(handle)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")


def load_source(name: str, config: str | None = None, split: str = "train", data_files=None, data_dir=None):
    """One source: a local file/folder/glob, or anything `datasets.load_dataset` accepts (a Hub name)."""
    from datasets import load_dataset

    files = local_data_files(name) if data_files is None else None
    if files is not None:
        return load_local(files, split)
    try:
        return load_dataset(name, name=config, split=split, data_files=data_files, data_dir=data_dir)
    except FileNotFoundError as err:
        raise UserError(f"{name}: dataset not found locally or on the Hub ({str(err).splitlines()[0]})") from err
    except ValueError as err:
        raise UserError(f"{name}: {str(err).splitlines()[0]}") from err


# ---------------------------------------------------------------------------------------------------------------
# Formats


def detect_format(columns, forced: str | None = None, source: str = "data") -> str:
    if forced:
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
    if "text" in cols:
        return "text"
    raise UserError(
        f"{source}: cannot tell the format from columns {sorted(cols)}; expected messages, conversations, "
        "instruction/output, prompt/completion or text (or set dataset_format and column_mapping)"
    )


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def normalise(row: dict, fmt: str, instruction_template: str = "chat") -> dict:
    """One raw row -> messages / prompt+completion / text. Raises ValueError with the reason for a bad row."""
    if fmt == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        return {"messages": messages}
    if fmt == "sharegpt":
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError("'conversations' must be a non-empty list")
        messages = []
        for turn in turns:
            role = SHAREGPT_ROLES.get(turn.get("from"))
            if role is None:
                raise ValueError(f"unknown role {turn.get('from')!r} (expected one of {sorted(SHAREGPT_ROLES)})")
            messages.append({"role": role, "content": turn.get("value")})
        return {"messages": messages}
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
            return {"messages": prompt + completion, "_completion_turns": len(completion)}
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
            raise ValueError("'prompt' and 'completion' must be strings and the completion non-empty")
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
# The recipe's data


def load_recipe_data(recipe):
    """(train, eval or None, formats) as normalised in-memory datasets, with file/row errors named."""
    from datasets import Dataset

    args, sft_args = recipe.script, recipe.sft
    if not args.dataset_name:
        raise UserError(f"{recipe.source}: missing key 'dataset_name' (a data file, folder, glob or Hub dataset)")
    raw = load_source(args.dataset_name, args.dataset_config, args.dataset_train_split)
    if sft_args.column_mapping:
        raw = raw.rename_columns(sft_args.column_mapping)
    if len(raw) == 0:
        raise UserError(f"{args.dataset_name}: the dataset is empty")
    fmt = detect_format(raw.column_names, sft_args.dataset_format, args.dataset_name)
    rows, skipped = [], 0
    for index, row in enumerate(raw):
        try:
            rows.append(normalise(row, fmt, sft_args.instruction_template))
        except ValueError as err:
            if not sft_args.skip_bad_rows:
                raise UserError(f"{args.dataset_name}: row {index + 1}: {err} (or set skip_bad_rows: true)") from None
            skipped += 1
    train = Dataset.from_list(rows)
    return train, None, {"format": fmt, "skipped": skipped}
