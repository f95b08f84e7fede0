"""Which characters of an example are trained: each trained assistant turn as sft/masks/turns.py defines it,
and which turns share an example.

The turns of a conversation share one example when the conversation's own rendering holds each of them exactly as
the model generated it; a template that renders earlier turns differently (drops their reasoning, moves the
system prompt) gives turns of their own: the example is split (`mask_fallback` chooses otherwise).
"""

import json
from dataclasses import dataclass, field

from sft.masks.content import content_text
from sft.masks.plan import MaskError, MaskPlan
from sft.masks.turns import Conversation, Turn, turn_at

FALLBACKS = {
    "context": "train each assistant turn in the context the model sees when it generates it: one example per "
               "conversation where earlier turns render as generated, one per turn where they do not (default)",
    "last_assistant": "where earlier turns render differently, train only the conversation's last assistant turn",
    "split_turns": "always one example per trained assistant turn, each the conversation up to that turn",
    "error": "where earlier turns render differently, stop and name the example",
}


@dataclass
class Rendered:
    """One example: its text, trained character spans, and reasoning/tool-call spans (for `sft preview`)."""

    text: str
    spans: list
    is_chat: bool = True
    parts: list = field(default_factory=list)
    part: int = 0  # 0: a whole conversation; k: the k-th example a split conversation became
    fell_back: bool = False
    reasoning_left_out: int = 0  # trained turns whose reasoning the template does not write


def trained_turns(messages: list[dict], loss_mode: str, completion_turns: int | None = None) -> list[int]:
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if loss_mode == "completion":  # the answer: the completion's turns, or a conversation's last turn
        if completion_turns:
            return [i for i in assistant if i >= len(messages) - completion_turns]
        return assistant[-1:]
    if loss_mode == "last_assistant":
        return assistant[-1:]
    return assistant


def example_of(turns: list[Turn], part: int = 0, fell_back: bool = False) -> Rendered:
    """One example holding `turns`, whose last turn's text holds each of them as generated."""
    spans, parts = [], []
    for turn in turns:
        start = len(turn.prompt)
        spans.append((start, start + len(turn.trained)))
        parts += [(start + a, start + b, kind) for a, b, kind in turn.parts]
    return Rendered(turns[-1].text, spans, True, parts, part, fell_back, sum(t.reasoning_left_out for t in turns))


def grouped(turns: list[Turn]) -> list[list[Turn]]:
    """The fewest examples that each hold their turns as generated: the last turn's text, with every earlier turn
    it holds exactly; the turns it does not hold grouped the same way."""
    groups, left = [], list(turns)
    while left:
        text = left[-1].text
        group = [t for t in left if text.startswith(t.prompt + t.trained)]
        groups.insert(0, group)
        left = [t for t in left if t not in group]
    return groups


def clean_messages(messages) -> list[dict]:
    """Drop keys whose value is None, as apply_chat_template does (Arrow fills absent keys with None)."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def chat_examples(plan: MaskPlan, example: dict, loss_mode: str, fallback: str) -> list[Rendered]:
    if plan.template is None:
        raise MaskError("chat data needs a chat template and the tokenizer has none")
    messages = clean_messages(example["messages"])
    if not messages:
        raise MaskError("the conversation has no messages")
    if not plan.text_parts:  # text parts as one string, as the template writes text (not a list's repr)
        messages = [{**m, "content": content_text(m["content"])} if isinstance(m.get("content"), list) else m
                    for m in messages]
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    row_kwargs = example.get("chat_template_kwargs")
    row_kwargs = json.loads(row_kwargs) if isinstance(row_kwargs, str) else (row_kwargs or {})
    conversation = Conversation(plan, messages, tools, row_kwargs)
    if loss_mode == "all":
        text = conversation.render(len(messages))
        return [Rendered(text, [(0, len(text))])]
    if messages[-1].get("role") != "assistant":
        raise MaskError(f"the conversation ends on a {messages[-1].get('role')} turn, not an assistant turn")
    wanted = trained_turns(messages, loss_mode, example.get("_completion_turns"))
    last = turn_at(plan, conversation, wanted[-1])
    turns = []
    for i in wanted[:-1]:
        try:
            turns.append(turn_at(plan, conversation, i))
        except MaskError as err:
            if not err.template:
                raise
            if fallback == "last_assistant":
                return [example_of([last], fell_back=True)]
            raise MaskError(str(err), template=True, helps=("last_assistant",)) from None
    turns.append(last)
    if fallback == "split_turns" and len(turns) > 1:
        return [example_of([t], k, True) for k, t in enumerate(turns, start=1)]
    groups = grouped(turns)
    if len(groups) == 1:
        return [example_of(turns)]
    if fallback == "error":
        raise MaskError("the chat template renders earlier assistant turns differently from how the model generated "
                        "them (e.g. drops their reasoning)", template=True, helps=("context", "last_assistant"))
    if fallback == "last_assistant":
        return [example_of([last], fell_back=True)]
    return [example_of(group, k) for k, group in enumerate(groups, start=1)]


def end_of_turn_token(tokenizer, chat_template: str | None = None, stop_tokens=()) -> str | None:
    """The token that ends a plain assistant answer under this template (what generation must stop on)."""
    from sft.masks.plan import plan_masks

    plan = plan_masks(tokenizer, "assistant", chat_template, stop_tokens)
    if plan.template is None or plan.special_run is None:
        return tokenizer.eos_token
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        turn = turn_at(plan, Conversation(plan, messages, None, {}), 1)
    except MaskError:
        return tokenizer.eos_token
    found = [m.group(1) for m in plan.special_run.finditer(turn.trained)]
    return found[-1] if found else tokenizer.eos_token
