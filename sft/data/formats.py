"""Formats: which of the five formats a dataset has, and one raw row normalised into one of three shapes:
  {"messages": [{"role", "content", ...}, ...]}   chat, ShareGPT, and instruction data rendered as chat
  {"prompt": str, "completion": str}              raw prompt/completion and Alpaca-style instruction data
  {"text": str}                                   continued pre-training
A bad row raises ValueError with the reason; the caller names its file and line."""

import json

from sft.errors import UserError

FORMATS = ("chat", "sharegpt", "instruction", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool", "developer", "ipython", "function")
PLAIN_ROLES = frozenset(ROLES)
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)
# alignment-handbook's `dataset_mixture`, plus sft's per-source keys (format, column_mapping, data_files, data_dir)


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
    if (type(message) is dict and len(message) == 2 and type(message.get("content")) is str
            and type(message.get("role")) is str and message["role"] in PLAIN_ROLES and message["content"].strip()):
        return message  # the common case, {"role": ..., "content": "..."}: nothing to change (a fifth of the pass)
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


def renders_chat(fmt: str, features, instruction_template: str = "chat") -> bool:
    """Whether rows of this format and these columns become messages (and need a chat template), as `normalise`
    decides: prompt/completion data does when its prompt column holds lists of messages."""
    if fmt == "prompt_completion":
        from datasets import LargeList, List

        return isinstance(features.get("prompt"), (List, LargeList, list))
    return fmt in ("chat", "sharegpt") or (fmt == "instruction" and instruction_template != "alpaca")


def default_loss_mode(fmt: str) -> str:
    return {"chat": "assistant", "sharegpt": "assistant", "text": "all"}.get(fmt, "completion")

