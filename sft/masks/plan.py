"""How one tokenizer + chat template is rendered and masked: the template, the tokens that end generation, and
the special token the template writes after an assistant message. Built once per dataset."""

import re
from dataclasses import dataclass, field

from sft.errors import UserError

IGNORE = -100
OPEN, CLOSE = "\ue000", "\ue001"  # private-use sentinels around a probe answer


class MaskError(ValueError):
    """The trained tokens of one example cannot be established; the message says why.

    `template` is true when the template is the cause (a mask_fallback choice or a template change may help);
    `helps` names the mask_fallback choices that would train the example."""

    def __init__(self, message: str, template: bool = False, helps: tuple[str, ...] = ()):
        if helps:
            message += "; " + " or ".join(f"mask_fallback: {name}" for name in helps) + " would train it"
        super().__init__(message)
        self.template = template
        self.helps = helps


@dataclass
class MaskPlan:
    template: str | None
    stop_tokens: tuple[str, ...]  # what ends generation: eos and the generation config's eos_token_id
    closer: str | None = None  # the special token the template writes right after an assistant message
    closer_written_last: bool = True  # False: only before a following turn (the next header ends the turn)
    template_kwargs: dict = field(default_factory=dict)
    special_run: re.Pattern | None = None  # optional whitespace, then one special token
    special_tokens: tuple[str, ...] = ()  # the tokenizer's special tokens, longest first
    text_parts: bool = False  # the template renders text only as content parts: rows' parts are kept, not joined
    description: str = "the model's own template, rendered turn by turn"


def special_tokens(tokenizer) -> list[str]:
    specials = set(tokenizer.all_special_tokens)
    specials |= {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
    return sorted((t for t in specials if t), key=len, reverse=True)


def generation_stop_tokens(model_path, tokenizer) -> list[str]:
    """The tokens the model's generation_config.json ends generation on (eos_token_id, an id or a list)."""
    from transformers import GenerationConfig

    if not model_path:
        return []
    try:
        config = GenerationConfig.from_pretrained(str(model_path))
    except (OSError, ValueError):  # no generation_config.json: eos alone ends generation
        return []
    ids = config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    tokens = tokenizer.convert_ids_to_tokens([i for i in ids if isinstance(i, int) and 0 <= i < len(tokenizer)])
    return [t for t in tokens if t]


def compile_template(template: str) -> None:
    """Invalid Jinja is the template's fault, not the data's: one line with Jinja's own message and line."""
    from jinja2 import TemplateSyntaxError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateSyntaxError as err:
        raise UserError(f"the chat template is not valid Jinja: {err.message} (template line {err.lineno})") from None


def plan_masks(tokenizer, loss_mode: str | None = "assistant", chat_template: str | None = None,
               stop_tokens=(), template_kwargs: dict | None = None) -> MaskPlan:
    template = chat_template or tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    specials = special_tokens(tokenizer)
    pattern = re.compile("[ \t\n]*(" + "|".join(map(re.escape, specials)) + ")") if specials else None
    stops = tuple(dict.fromkeys(t for t in [tokenizer.eos_token, *stop_tokens] if t))
    kwargs = {**tokenizer.special_tokens_map, **(template_kwargs or {})}  # as apply_chat_template passes them
    plan = MaskPlan(template, stops, template_kwargs=kwargs, special_run=pattern, special_tokens=tuple(specials))
    if template is None:
        plan.description = "no chat template"
        return plan
    compile_template(template)
    plan.text_parts = renders_text_only_as_parts(plan)
    if loss_mode != "all":
        plan.closer, plan.closer_written_last = find_closer(plan)
    return plan


def renders_text_only_as_parts(plan: MaskPlan) -> bool:
    """Whether the template writes a message's text only when it comes as content parts ([{"type": "text", "text":
    ...}], as some vision models' templates want). Otherwise rows' text parts are joined into a string before
    rendering: a text-only template (Llama 3.2, Gemma 2) writes a list as its Python repr, "[{'type': 'text', ...",
    and that would be trained."""
    text = OPEN + "Hi" + CLOSE

    def writes(content) -> bool:
        try:
            return text in render(plan, [{"role": "user", "content": content}])
        except MaskError:
            return False

    return not writes(text) and writes([{"type": "text", "text": text}])


def special_run_at(plan: MaskPlan, text: str) -> list[str]:
    """The special tokens (with the whitespace before each) that start `text`."""
    run, position = [], 0
    while (match := plan.special_run.match(text, position)) is not None:
        run.append(match.group(0))
        position = match.end()
    return run


def find_closer(plan: MaskPlan) -> tuple[str | None, bool]:
    """(the special tokens written right after an assistant answer to end the turn, whether they are written after
    the last turn): from a conversation ending on the answer, else from one where a user turn follows it. Tokens
    that also open the assistant's header after a user turn belong to the next turn (Command R7B writes it) and
    are left out."""
    if plan.special_run is None:
        return None, True
    def message(role, text, parts):
        return {"role": role, "content": [{"type": "text", "text": text}] if parts else text}

    probes = []
    for parts in (False, True):  # templates of vision models want content parts
        user, answer = message("user", OPEN + "Hi" + CLOSE, parts), message("assistant", OPEN + "Hello" + CLOSE, parts)
        probes += [(True, [user, answer]), (False, [user, answer, message("user", "Bye", parts)])]
    for last, messages in probes:
        try:
            text = render(plan, messages)
        except MaskError:
            continue
        if text.count(CLOSE) != 2:
            continue
        _, after_user, after_answer = text.split(CLOSE)
        header = {token.strip(" \t\n") for token in special_run_at(plan, after_user)[1:]}
        run = []
        for token in special_run_at(plan, after_answer):
            if token.strip(" \t\n") in header:
                break
            run.append(token)
        if run:
            return "".join(run).lstrip(" \t\n"), last
    return None, True


def render(plan: MaskPlan, messages, tools=None, add_generation_prompt=False, row_kwargs=None) -> str:
    """The template's text for one conversation, with the recipe's and the row's chat_template_kwargs."""
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs = {**plan.template_kwargs, **(row_kwargs or {})}

    def rendered(conversation):
        texts, _ = render_jinja_template(conversations=[conversation], tools=tools, chat_template=plan.template,
                                         add_generation_prompt=add_generation_prompt, **kwargs)
        return texts[0]

    try:
        try:
            return rendered(messages)
        except TypeError:
            # Most templates write tool-call arguments with `tojson`; some join them as text with `+`
            # (DeepSeek-V3.1), which a mapping cannot be: give those the arguments as JSON text.
            textual = with_text_arguments(messages)
            if textual == messages:
                raise
            return rendered(textual)
    except Exception as err:  # template errors (raise_exception, undefined fields) are the example's problem
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MaskError(f"the chat template cannot render it: {message}") from None


def with_text_arguments(messages: list[dict]) -> list[dict]:
    """The messages with every tool call's mapping arguments written as JSON text (key order kept)."""
    import json

    def textual(call):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments"), dict):
            return call
        return {**call, "function": {**function, "arguments": json.dumps(function["arguments"], ensure_ascii=False)}}

    return [{**m, "tool_calls": [textual(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m
            for m in messages]
