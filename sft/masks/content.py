"""What an assistant message holds: its text, its reasoning (inline before </think>, or in a field), its tool
calls, and where each lies in the text the model generates."""

REASONING, TOOL_CALLS = 1, 2  # kinds of the parts `sft preview` colours
THINK, THINK_END = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "thinking")


def content_text(content) -> str:
    """A message's text: a string, or the concatenated text parts of a content list."""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def reasoning_of(message: dict) -> str:
    """A message's reasoning, stripped: written in its content before `</think>`, or in a reasoning field."""
    content = content_text(message.get("content"))
    if THINK_END in content:
        return content.split(THINK_END)[0].split(THINK)[-1].strip()
    field = next((message[k] for k in REASONING_FIELDS if isinstance(message.get(k), str)), "")
    return field.strip()


def as_generated(message: dict, opening: str) -> str | None:
    """The message's content as the model writes it after a generation prompt that ends in `opening` (<think>\\n):
    its reasoning (in DeepSeek-R1's form where it is a field), </think>, then the answer; None without reasoning."""
    content = message.get("content")
    if not isinstance(content, str):
        return None
    if THINK_END in content:  # the prompt's opening stands for the content's own
        content = content.lstrip()
        if content.startswith(opening):
            return content
        return opening + (content[len(THINK):].lstrip() if content.startswith(THINK) else content)
    if not reasoning_of(message):
        return None
    closing = "\n</think>\n\n" if opening.endswith("\n") else THINK_END
    return opening + reasoning_of(message) + closing + content.lstrip()


def reasoning_not_in(message: dict, trained: str) -> bool:
    """Whether the message carries reasoning (inline or in a field) and none of it is in the turn's trained text:
    the template does not write it (Llama 3.2 ignores reasoning_content; DeepSeek-V3.1 with thinking off)."""
    given = [reasoning_of(message)] + [message[k].strip() for k in REASONING_FIELDS if isinstance(message.get(k), str)]
    given = [text for text in given if text]
    return bool(given) and not any(text in trained for text in given)


def turn_parts(message: dict, trained: str, stop_at: int) -> list:
    """(start, end, kind) of the reasoning and the tool calls inside a turn's trained text, where they are found."""
    parts = []
    content = content_text(message.get("content"))
    reasoning = message.get("reasoning_content") or message.get("thinking")
    if not isinstance(reasoning, str) and "</think>" in content:
        reasoning, content = content.split("</think>", 1)
        reasoning = reasoning.split("<think>")[-1]
    reasoning_end = 0
    if isinstance(reasoning, str) and reasoning.strip() and reasoning.strip() in trained:
        start = trained.index(reasoning.strip())
        reasoning_end = start + len(reasoning.strip())
        parts.append((start, reasoning_end, REASONING))
    if message.get("tool_calls"):
        start = reasoning_end
        if content.strip() and content.strip() in trained[start:stop_at]:
            start = trained.rindex(content.strip(), start, stop_at) + len(content.strip())
        if stop_at > start:
            parts.append((start, stop_at, TOOL_CALLS))
    return parts
