"""The trained text of one assistant turn: the definition.

For each trained assistant turn i, the trained text is what the model must generate after the conversation so far
is rendered with `add_generation_prompt=True` (P): the rendering of the conversation through turn i (F) after P,
up to and including the token that ends generation (eos or a generation-config stop token; where the template
writes none of them, the special token it ends the turn with; where it writes no token after the last turn, the
stop token it writes before the next turn, appended). Reasoning, tool calls and markers the model writes itself
(gpt-oss's channels, Command R7B's <|START_RESPONSE|>) are trained; headers in P are not. Where the generation
prompt opens the reasoning and the template drops it from the turn (DeepSeek-R1, DeepSeek-V3.1 thinking), the turn
is rendered with its reasoning kept.
"""

import os
from dataclasses import dataclass, field

from sft.masks.content import (REASONING_FIELDS, THINK, THINK_END, as_generated, content_text, reasoning_not_in,
                               turn_parts)
from sft.masks.plan import MaskError, MaskPlan, render, special_run_at

HIDDEN_THINK_END = "\ue002"  # stands for </think> where a template must not find it


@dataclass
class Turn:
    prompt: str  # P: the conversation before the turn, with the generation prompt
    trained: str  # what the model generates after P, through the end-of-generation token
    after: str = ""  # what the template writes after that (untrained: e.g. the next header)
    parts: list = field(default_factory=list)  # (start, end, kind) inside `trained`: reasoning, tool calls
    reasoning_left_out: bool = False  # the message's reasoning is not in `trained` (the template does not write it)

    @property
    def text(self) -> str:
        return self.prompt + self.trained + self.after


class Conversation:
    """One conversation's renderings, each made once."""

    def __init__(self, plan: MaskPlan, messages, tools, row_kwargs, shown=None):
        self.plan, self.messages, self.tools, self.row_kwargs = plan, messages, tools, row_kwargs
        self.shown = shown or messages  # what the template is given
        self.cache = {}

    def render(self, count: int, generation_prompt: bool = False) -> str:
        key = (count, generation_prompt)
        if key not in self.cache:
            text = render(self.plan, self.shown[:count], self.tools, generation_prompt, self.row_kwargs)
            self.cache[key] = text.replace(HIDDEN_THINK_END, THINK_END)
        return self.cache[key]

    def generated_as(self, i: int, content: str) -> "Conversation":
        """This conversation with message i written as `content` (its reasoning inline, no reasoning field) and its
        `</think>` hidden from the template while it renders (restored in the text), so that a template that
        splits the reasoning off every assistant turn renders the turn as generated."""
        messages = list(self.shown)
        message = {k: v for k, v in messages[i].items() if k not in REASONING_FIELDS}
        messages[i] = {**message, "content": content.replace(THINK_END, HIDDEN_THINK_END)}
        kept = Conversation(self.plan, self.messages, self.tools, self.row_kwargs, shown=messages)
        kept.cache = {key: text for key, text in self.cache.items() if key[0] <= i}  # renderings without message i
        return kept


def generation_start(prompt: str, full: str, previous: dict, number: int) -> int:
    """Where the answer starts in `full` when `full` does not start with `prompt` (the template renders the
    conversation so far differently once an answer follows, e.g. moves the system prompt or drops a tool call's
    reasoning): right after the longest end of `prompt` that `full` also has, which must hold the previous
    message's text."""
    low, high = 0, len(prompt)
    while low < high:  # every shorter end of prompt occurs in full when a longer one does
        middle = (low + high + 1) // 2
        if prompt[-middle:] in full:
            low = middle
        else:
            high = middle - 1
    needed = content_text(previous.get("content")).strip()
    if low == 0 or (needed and needed not in prompt[-low:]):
        raise MaskError(f"the template renders the conversation before message {number} (assistant) one way with "
                        "add_generation_prompt=True and another way once the answer follows, so what the model "
                        "generates cannot be located", template=True)
    return full.index(prompt[-low:]) + low


def header_length(plan: MaskPlan, prompt_tail: str, full_tail: str) -> int:
    """How much of the rendering after the conversation so far still belongs to the prompt: the longest start it
    shares with the generation prompt (never cutting a special token), or the longest end of the generation prompt
    that opens with a special token and that it starts with (the assistant header)."""
    shared = len(os.path.commonprefix([prompt_tail, full_tail]))
    for match in plan.special_run.finditer(prompt_tail) if plan.special_run is not None else ():
        if match.start(1) < shared < match.end():
            shared = match.start(1)
    header = next((n for n in range(len(prompt_tail), 0, -1) if full_tail.startswith(prompt_tail[-n:])
                   and plan.special_run is not None and plan.special_run.match(prompt_tail, len(prompt_tail) - n)),
                  0)
    return max(shared, header)


def end_of_generation(plan: MaskPlan, generated: str) -> int | None:
    """The end of the first generation stop token in the generated text; else of the template's own closer."""
    hits = [(generated.find(token), token) for token in plan.stop_tokens if token in generated]
    if hits:
        position, token = min(hits)
        return position + len(token)
    if plan.closer and plan.closer_written_last and plan.closer in generated:
        return generated.index(plan.closer) + len(plan.closer)
    return None


def appended_stop(plan: MaskPlan, conversation: Conversation, prompt: str, generated: str, number: int) -> str:
    """A turn the template ends with no token of its own (GLM: the next header ends it): the stop token written
    after it in the conversation, else the one the template writes before a following turn."""
    whole = conversation.render(len(conversation.messages))
    if plan.special_run is not None and whole.startswith(prompt + generated):
        match = plan.special_run.match(whole, len(prompt + generated))
        if match and match.group(1) in plan.stop_tokens:
            return match.group(0)
    # The closer's first token ends the turn: GLM's next header <|u|>, or an end token written only when the next
    # turn starts (Apertus, nanochat: <|assistant_end|><|user_start|>).
    first = special_run_at(plan, plan.closer)[0].strip(" \t\n") if plan.closer else None
    if first and not plan.closer_written_last and first in plan.stop_tokens:
        return first
    if first:
        raise MaskError(f"no token ends assistant message {number}: the template ends it only with the next turn's "
                        f"{first}, which is not a generation stop token of the model; add its id to "
                        "eos_token_id in the model's generation_config.json", template=True)
    raise MaskError("the template writes no special token after an assistant turn, so the model would never learn "
                    "to stop; end assistant turns with one (e.g. {{ eos_token }})", template=True)


def turn_at(plan: MaskPlan, conversation: Conversation, i: int) -> Turn:
    """Assistant message i as the model generates it (the definition above). Where the generation prompt opens the
    reasoning (ends in <think>) and the template's rendering of the turn holds none, the turn is `reasoning_kept`."""
    turn = rendered_turn(plan, conversation, i)
    prompt = conversation.render(i, True)
    if prompt.rstrip(" \t\n").endswith(THINK) and not holds_reasoning(turn.trained):
        return reasoning_kept(plan, conversation, i, prompt) or turn
    return turn


def holds_reasoning(trained: str) -> bool:
    """Whether a turn's trained text holds a </think> other than a bare one at its start (DeepSeek-V3.1 writes that
    one for a turn without reasoning)."""
    return THINK_END in trained.lstrip(" \t\n").removeprefix(THINK_END)


def reasoning_kept(plan: MaskPlan, conversation: Conversation, i: int, prompt: str) -> Turn | None:
    """Assistant message i with its reasoning, for a template that drops the reasoning from every assistant turn,
    the one being answered included, while its generation prompt `prompt` opens it: what the model generates after
    that prompt is the reasoning, </think>, then the answer, ended as the template ends the turn. The turn is
    rendered with its reasoning inline. DeepSeek-R1 (and its distills: "<think>\\n") writes it right after the
    header; DeepSeek-V3.1 in thinking mode writes its non-thinking </think> there first, where the prompt has <think>.
    None when the message has no reasoning or the template does not render it that way."""
    opening = prompt[prompt.rindex(THINK):]
    content = as_generated(conversation.messages[i], opening)
    if content is None:
        return None
    kept = conversation.generated_as(i, content)
    before, full = kept.render(i), kept.render(i + 1)
    if not prompt.startswith(before):
        return None
    header = prompt[len(before):len(prompt) - len(opening)]
    for marker in ("", THINK_END):
        if full.startswith(before + header + marker + opening):
            turn = ended_turn(plan, kept, i, prompt, full[len(before + header + marker + opening):])
            return turn if THINK_END in turn.trained else None
    return None


def rendered_turn(plan: MaskPlan, conversation: Conversation, i: int) -> Turn:
    """Assistant message i: what follows the generation prompt in the template's rendering of the turn."""
    number = i + 1
    if i == 0:
        raise MaskError("the conversation starts with an assistant turn; the model needs something to answer")
    prompt, full = conversation.render(i, True), conversation.render(i + 1)
    if full.startswith(prompt):
        start = len(prompt)
    else:
        before = conversation.render(i)
        if full.startswith(before) and prompt.startswith(before):
            # The generation prompt holds text the answer does not follow (R1-Distill's "<think>\n", a reminder
            # before the header): the answer starts after what both share, or after the prompt's header.
            start = len(before) + header_length(plan, prompt[len(before):], full[len(before):])
            prompt = full[:start]
        else:
            start = generation_start(prompt, full, conversation.messages[i - 1], number)
    return ended_turn(plan, conversation, i, prompt, full[start:])


def ended_turn(plan: MaskPlan, conversation: Conversation, i: int, prompt: str, generated: str) -> Turn:
    """The turn after `prompt` whose rendering continues with `generated`: trained through the end of generation."""
    number = i + 1
    end = end_of_generation(plan, generated)
    if end is None:
        trained, after = generated + appended_stop(plan, conversation, prompt, generated, number), ""
    else:
        trained, after = generated[:end], generated[end:]
    if not trained.strip():
        raise MaskError(f"the chat template renders nothing for assistant message {number}")
    message = conversation.messages[i]
    return Turn(prompt, trained, after, turn_parts(message, trained, end or len(generated)),
                reasoning_not_in(message, trained))
