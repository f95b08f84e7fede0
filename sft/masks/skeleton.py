"""The fast path for chat rows: render the template once per conversation shape, then fill each row's texts in.

A shape is what the template's output may depend on besides the texts: the roles in order, the tools, the row's
chat_template_kwargs, the loss mode and the trained turns. Its skeleton is the exact path (`chat_examples`) run on
the shape with a placeholder for each message's text. A row of that shape is the skeleton with its texts put in
place of the placeholders; the trained spans move by the lengths of the texts before them.

That is only right when the template copies each text unchanged (or trimmed, as `| trim` does) and in order, and
does not branch on it. So a shape has no skeleton (its rows take the exact path) when a placeholder does not come
back whole, once and in order, or a trained span ends inside one; a row takes the exact path when its texts could
change what the template or the mask definition does (special tokens, think tags, empty text, non-text content,
keys beyond role and content); and the first rows of every shape, then one row in SAMPLE, are also rendered the
exact way and compared: one difference and the shape takes the exact path from then on.
"""

import json
import re
from dataclasses import dataclass
from itertools import accumulate

from sft.masks.plan import MaskError, MaskPlan, render
from sft.masks.spans import Rendered, chat_examples

VERIFY_FIRST, SAMPLE = 3, 256  # rows of each shape checked against the exact path: the first few, then 1 in SAMPLE
# Whitespace around each placeholder, to tell which ends the template trims. The skeleton is made once with each
# common whitespace character outermost, and all must agree: a template that strips only "\n" (Qwen3's
# lstrip('\n')) or only spaces trims one of them in part.
WHITE = "\n \t\r\u2003"
PADS = [(c + WHITE.replace(c, ""), WHITE.replace(c, "")[::-1] + c) for c in WHITE[:4]]
MAX_SHAPES = 20_000
RISKY = ("<think>", "</think>")  # templates branch on these in the text (reasoning split off)


@dataclass
class Skeleton:
    literals: list[str]  # the text around the slots: literals[0], slot 0, literals[1], ..., literals[-1]
    trims: list[tuple[bool, bool]]  # per slot (message order): whether the template trims its start, its end
    bounds: list[tuple[int, int]]  # each span boundary: (slots before it, offset in the text without the slots)
    fell_back: bool = False  # mask_fallback: last_assistant chose the last turn alone
    checked: int = 0  # rows compared with the exact path so far

    def __post_init__(self):
        self.strips = [STRIPS[trim] for trim in self.trims]  # how each slot's text is put in


def build(plan: MaskPlan, messages: list[dict], example: dict, loss_mode: str, fallback: str) -> Skeleton | None:
    """The skeleton of this row's shape; None when the template does not copy the texts through whole."""
    made = [skeleton_with(plan, messages, example, loss_mode, fallback, *pads) for pads in PADS]
    return made[0] if all(m == made[0] for m in made) else None


def skeleton_with(plan, messages, example, loss_mode, fallback, pre: str, post: str) -> Skeleton | None:
    probe = [{"role": m["role"], "content": f"{pre}\ue010{k}\ue011{post}"} for k, m in enumerate(messages)]
    try:
        rendered = chat_examples(plan, {**example, "messages": probe}, loss_mode, fallback)
    except MaskError:
        return None  # the exact path names the row's problem
    if len(rendered) != 1 or rendered[0].parts or not prompts_lead(plan, probe, example, rendered[0].text, loss_mode):
        return None
    text, literals, trims, regions, position = rendered[0].text, [], [], [], 0
    for k in range(len(messages)):
        core = f"\ue010{k}\ue011"
        if text.count(core) != 1 or text.index(core) < position:
            return None
        start = text.index(core)
        end = start + len(core)
        kept_pre, kept_post = text[start - len(pre):start] == pre, text[end:end + len(post)] == post
        start, end = start - len(pre) * kept_pre, end + len(post) * kept_post
        literals.append(text[position:start])
        trims.append((not kept_pre, not kept_post))
        regions.append((start, end))
        position = end
    literals.append(text[position:])
    bounds = []
    for span in rendered[0].spans:
        for point in span:
            before = [r for r in regions if r[1] <= point]
            if any(a < point < b for a, b in regions):
                return None
            bounds.append((len(before), point - sum(b - a for a, b in before)))
    return Skeleton(literals, trims, bounds, rendered[0].fell_back)


def prompts_lead(plan: MaskPlan, probe: list[dict], example: dict, text: str, loss_mode: str) -> bool:
    """Whether the conversation's text starts with each assistant turn's generation prompt. Where it does not
    (R1-Distill's "<think>\n" after the header), where the answer starts depends on its first characters."""
    if loss_mode == "all":
        return True
    tools, kwargs = (json.loads(v) if isinstance(v, str) else v
                     for v in (example.get("tools"), example.get("chat_template_kwargs")))
    try:
        return all(text.startswith(render(plan, probe[:i], tools, True, kwargs or {}))
                   for i, m in enumerate(probe) if m["role"] == "assistant" and i > 0)
    except MaskError:
        return False


STRIPS = {(False, False): None, (True, True): str.strip, (True, False): str.lstrip, (False, True): str.rstrip}


def fill(skeleton: Skeleton, texts: list[str]) -> Rendered:
    filled = [text if strip is None else strip(text) for text, strip in zip(texts, skeleton.strips)]
    offsets = list(accumulate(map(len, filled), initial=0))
    pieces = [None] * (2 * len(filled) + 1)
    pieces[0::2], pieces[1::2] = skeleton.literals, filled  # literal, text, literal, ..., literal
    points = [offset + offsets[slots] for slots, offset in skeleton.bounds]
    return Rendered("".join(pieces), list(zip(points[::2], points[1::2])), fell_back=skeleton.fell_back)


class Skeletons:
    """One plan's skeletons, by shape, for the rows of one worker process."""

    def __init__(self, plan: MaskPlan, verify_first: int = VERIFY_FIRST, sample: int = SAMPLE):
        self.plan, self.verify_first, self.sample = plan, verify_first, sample
        self.shapes: dict = {}  # shape -> its Skeleton; None: its rows take the exact path
        self.once: set = set()  # shapes seen once so far
        risky = {*RISKY, *plan.stop_tokens, *([plan.closer] if plan.closer else []), "\ue010", "\ue011",
                 *plan.special_tokens}
        # one search of literals per text (a special token anywhere, as special_run.search finds it, 4x faster)
        self.risky = re.compile("|".join(map(re.escape, sorted(risky, key=len, reverse=True))))

    def texts(self, messages: list[dict]) -> list[str] | None:
        """Each message's text, or None when the row's texts could change what the template does (or a message
        has keys beyond role and content that are set)."""
        texts = []
        for message in messages:
            content = message.get("content")
            if type(message.get("role")) is not str:
                return None
            if len(message) != 2 and any(v is not None for k, v in message.items() if k not in ("role", "content")):
                return None
            if type(content) is not str or not content.strip() or self.risky.search(content):
                return None
            texts.append(content)
        return texts

    def examples(self, example: dict, loss_mode: str, fallback: str) -> list[Rendered]:
        """The row's examples, equal to `chat_examples(plan, example, loss_mode, fallback)`."""
        messages = example.get("messages") or []
        texts = self.texts(messages)
        if texts is None:
            return chat_examples(self.plan, example, loss_mode, fallback)
        key = (tuple(m.get("role") for m in messages), loss_mode, fallback, example.get("_completion_turns"),
               _text(example.get("tools")), _text(example.get("chat_template_kwargs")))
        if key not in self.shapes:  # a shape seen once (tools that differ per row) is not worth a skeleton yet
            if len(self.shapes) >= MAX_SHAPES:
                self.shapes.clear()
                self.once.clear()
            self.shapes[key] = None
            self.once.add(key)
            return chat_examples(self.plan, example, loss_mode, fallback)
        if key in self.once:
            self.once.discard(key)
            self.shapes[key] = build(self.plan, messages, example, loss_mode, fallback)
        skeleton = self.shapes[key]
        if skeleton is None:
            return chat_examples(self.plan, example, loss_mode, fallback)
        filled = fill(skeleton, texts)
        skeleton.checked += 1
        if skeleton.checked <= self.verify_first or (self.sample and skeleton.checked % self.sample == 0):
            exact = chat_examples(self.plan, example, loss_mode, fallback)
            if exact != [filled]:
                self.shapes[key] = None
            return exact
        return [filled]


def _text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


_BY_PLAN: dict = {}  # this process's skeletons: id(plan) -> (plan, Skeletons); a worker gets its own plan


def skeletons_for(plan: MaskPlan) -> Skeletons:
    cached = _BY_PLAN.get(id(plan))
    if cached is None or cached[0] is not plan:  # looked up per row: identity, not the plan's contents
        if len(_BY_PLAN) >= 8:
            _BY_PLAN.clear()
        cached = _BY_PLAN[id(plan)] = (plan, Skeletons(plan))
    return cached[1]
