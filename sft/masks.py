"""Render, tokenize and mask: normalised examples become `input_ids` and `labels` (-100 where not trained).

Trained, whatever the template: each trained assistant turn's content and the end-of-turn token(s) that close
it (what the model must emit to stop). Not trained: role headers, system/user/tool turns, the next turn's header.
Where the chat spans come from:

* markers - the template has `{% generation %}` blocks, or TRL ships a training version of it
  (trl/chat_templates/*_training.jinja, which is then used to render, as TRL does). The blocks are the trained
  spans, exactly as TRL's `assistant_only_loss` (`return_assistant_tokens_mask`) computes them.
* sentinels - any other template. Each trained assistant content is wrapped in two private-use characters, the
  conversation is rendered once, and the sentinels give each content's exact character span. The span is then
  extended over the end-of-turn token the template writes after an assistant turn (found once per template by
  rendering a probe). The text without sentinels must equal a plain rendering: a template that trims, rewrites or
  drops content (e.g. strips earlier reasoning) is caught, never trained on by guesswork. Assistant turns made of
  tool calls are located by rendering the conversation up to them (this needs a prefix-preserving template).

Rendered texts are tokenized in batches and a token is trained when its characters overlap a trained span (the
first and the last token of a span are found with `char_to_token`, as transformers does), so tokens that merge
across a boundary are handled the same way as TRL's masks. Where a mask cannot be established the example is named
with the reason; `mask_fallback` chooses what to do instead (see FALLBACKS).

Results are cached on disk under a key made of the examples, the tokenizer, the template and the settings, so a
second run with unchanged inputs reuses them and any change to one of them does not.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError

OPEN, CLOSE = "\ue000", "\ue001"
IGNORE = -100
# What to do with an example whose mask cannot be established (content rewritten or dropped by the template):
FALLBACKS = {
    "error": "stop and name the example and the reason (default)",
    "last_assistant": "train only the example's last assistant turn, which templates render in full",
    "split_turns": "one example per trained assistant turn, each the conversation up to that turn, trained on it",
}
COLUMNS = ("input_ids", "labels", "length", "trained", "truncated", "lost", "error", "where", "source", "fallback")
CACHE_VERSION = "1"  # bump when the output of this module changes for the same inputs


class MaskError(ValueError):
    """The trained tokens of one example cannot be established; the message says why.

    `template` is true when the template is the cause (a fallback may help), false for bad data."""

    def __init__(self, message: str, template: bool = False):
        super().__init__(message)
        self.template = template


# ---------------------------------------------------------------------------------------------------------------
# Templates: which spans to trust, and the end-of-turn token


def has_generation_markers(template: str) -> bool:
    return re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def trl_training_templates() -> dict[str, tuple[str, str]]:
    """TRL's own pairs: original template text -> (name, training version with generation markers)."""
    from trl import chat_template_utils as ctu

    pairs = {}
    for attribute in dir(ctu):
        if attribute.endswith("_training_chat_template"):
            base = attribute.replace("_training_chat_template", "_chat_template")
            if isinstance(getattr(ctu, base, None), str):
                pairs[getattr(ctu, base)] = (base[: -len("_chat_template")], getattr(ctu, attribute))
    return pairs


def special_tokens(tokenizer) -> list[str]:
    specials = set(tokenizer.all_special_tokens)
    specials |= {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
    return sorted((t for t in specials if t), key=len, reverse=True)


@dataclass
class MaskPlan:
    """How one tokenizer + template + loss mode is rendered and masked. Built once per dataset."""

    template: str | None  # the template rendered (a TRL training version replaces the original)
    markers: bool  # spans from {% generation %} blocks
    closer: str | None  # sentinels: what the template writes right after an assistant content to end the turn
    description: str
    template_kwargs: dict = field(default_factory=dict)
    special_run: re.Pattern | None = None

    @property
    def end_token(self) -> str | None:
        """The first special token of the closer: what generation must stop on."""
        if not self.closer or self.special_run is None:
            return None
        match = self.special_run.search(self.closer)
        return match.group(0).strip(" \t\n") if match else None


def plan_masks(tokenizer, loss_mode: str | None = "assistant", chat_template: str | None = None) -> MaskPlan:
    template = chat_template or tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    specials = special_tokens(tokenizer)
    pattern = re.compile("[ \t\n]*(?:" + "|".join(map(re.escape, specials)) + ")") if specials else None
    kwargs = dict(tokenizer.special_tokens_map)  # what apply_chat_template passes the template
    if template is None:
        return MaskPlan(None, False, None, "no chat template", kwargs, pattern)
    if loss_mode != "all":
        if has_generation_markers(template):
            return MaskPlan(template, True, None, "the template's {% generation %} blocks", kwargs, pattern)
        trl_version = trl_training_templates().get(template)
        if trl_version:
            name, training = trl_version
            return MaskPlan(training, True, None, f"the {{% generation %}} blocks of TRL's {name} training template",
                            kwargs, pattern)
    plan = MaskPlan(template, False, None, "sentinels around assistant contents", kwargs, pattern)
    plan.closer = find_closer(plan)
    return plan


def find_closer(plan: MaskPlan) -> str | None:
    """The special token(s), with any whitespace before them, that the template writes after an assistant content:
    taken from the end of a conversation whose last turn is the assistant's, else from before the next turn."""
    if plan.special_run is None:
        return None
    run = re.compile(f"(?:{plan.special_run.pattern})+")
    probes = [
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": OPEN + "Hello" + CLOSE}], run),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": OPEN + "Hello" + CLOSE},
          {"role": "user", "content": "Bye"}], plan.special_run),
    ]
    for messages, pattern in probes:
        try:
            text = render(plan, messages)
        except MaskError:
            continue
        if CLOSE in text:
            match = pattern.match(text.split(CLOSE, 1)[1])
            if match:
                return match.group(0)
    return None


def end_of_turn_token(tokenizer, chat_template: str | None = None) -> str | None:
    """The special token that closes an assistant turn in this template (what generation must stop on)."""
    plan = plan_masks(tokenizer, "all", chat_template)
    if plan.template is None:
        return tokenizer.eos_token
    return plan.end_token or tokenizer.eos_token


# ---------------------------------------------------------------------------------------------------------------
# Rendering one example


def render(plan: MaskPlan, messages, tools=None, track=False, add_generation_prompt=False):
    """The template's text (and with track=True the {% generation %} spans) for one conversation."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, spans = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=plan.template, return_assistant_tokens_mask=track,
            add_generation_prompt=add_generation_prompt, **plan.template_kwargs,
        )
    except Exception as err:  # template errors (raise_exception, undefined fields) are the example's problem
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MaskError(f"the chat template cannot render it: {message}") from None
    return (texts[0], spans[0]) if track else texts[0]


def clean_messages(messages) -> list[dict]:
    """Drop keys whose value is None, as apply_chat_template does (Arrow fills absent keys with None)."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def trained_turns(messages: list[dict], loss_mode: str, completion_turns: int | None = None) -> list[int]:
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if loss_mode == "completion":  # the answer: the completion's turns, or a conversation's last turn
        if completion_turns:
            return [i for i in assistant if i >= len(messages) - completion_turns]
        return assistant[-1:]
    if loss_mode == "last_assistant":
        return assistant[-1:]
    return assistant


def render_chat(plan: MaskPlan, messages, loss_mode, completion_turns=None, tools=None):
    """(text, [(start, end) trained character spans]) for one conversation."""
    if plan.template is None:
        raise MaskError("chat data needs a chat template and the tokenizer has none")
    messages = clean_messages(messages)
    if not messages:
        raise MaskError("the conversation has no messages")
    if loss_mode == "all":
        text = render(plan, messages, tools)
        return text, [(0, len(text))]
    if messages[-1].get("role") != "assistant":
        raise MaskError(f"the conversation ends on a {messages[-1].get('role')} turn, not an assistant turn")
    wanted = trained_turns(messages, loss_mode, completion_turns)
    if plan.markers:
        return marker_spans(plan, messages, wanted, loss_mode, tools)
    return sentinel_spans(plan, messages, wanted, tools)


def marker_spans(plan, messages, wanted, loss_mode, tools):
    text, blocks = render(plan, messages, tools, track=True)
    blocks = [(a, b) for a, b in blocks if b > a]
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if loss_mode == "assistant" and len(wanted) == len(assistant):
        spans = blocks  # every generation block, exactly as TRL's assistant_only_loss
    elif len(blocks) == len(assistant):
        spans = [block for block, i in zip(blocks, assistant) if i in wanted]
    else:
        raise MaskError(f"the template's {{% generation %}} blocks ({len(blocks)}) do not match the assistant turns "
                        f"({len(assistant)}), so the trained turns cannot be told apart", template=True)
    if not spans:
        raise MaskError("the template marks no assistant tokens ({% generation %} blocks are empty)", template=True)
    return text, spans


def sentinel_spans(plan, messages, wanted, tools):
    wrapped, calls = [], []
    for i in wanted:
        if messages[i].get("tool_calls"):
            calls.append(i)
        elif content_text(messages[i].get("content")):
            wrapped.append(i)
        else:
            raise MaskError(f"message {i + 1} (assistant) has empty content")
    for m in messages:
        if OPEN in content_text(m.get("content")) or CLOSE in content_text(m.get("content")):
            raise MaskError("content holds the reserved characters U+E000/U+E001")
    marked = [{**m, "content": wrap(m["content"])} if i in wrapped else m for i, m in enumerate(messages)]
    marked_text = render(plan, marked, tools)
    plain = render(plan, messages, tools)
    pieces = marked_text.split(OPEN)
    text, spans = [pieces[0]], []
    length = len(pieces[0])
    for piece, i in zip(pieces[1:], wrapped):
        inner, sep, rest = piece.partition(CLOSE)
        if not sep or inner != content_text(messages[i]["content"]):
            break
        spans.append([length, length + len(inner)])
        text += (inner, rest)
        length += len(inner) + len(rest)
    text = "".join(text)
    if len(spans) != len(wrapped) or len(pieces) != len(wrapped) + 1 or text != plain:
        raise MaskError("the template rewrites or drops assistant content (e.g. trims it or strips earlier "
                        "reasoning), so the trained tokens cannot be located", template=True)
    for span in spans:
        span[1] = extend_over_closer(plan, text, span[1])
    for i in calls:
        spans.append(tool_call_span(plan, messages, i, plain, tools))
    return text, sorted(tuple(s) for s in spans)


def content_text(content) -> str:
    """A message's text: a string, or the concatenated text parts of a content list."""
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def wrap(content):
    if isinstance(content, list):  # sentinels before the first text part and after the last
        texts = [k for k, part in enumerate(content) if isinstance(part, dict) and "text" in part]
        content = [dict(part) for part in content]
        content[texts[0]]["text"] = OPEN + content[texts[0]]["text"]
        content[texts[-1]]["text"] += CLOSE
        return content
    return OPEN + content + CLOSE


def extend_over_closer(plan: MaskPlan, text: str, end: int) -> int:
    if plan.closer and text.startswith(plan.closer, end):
        return end + len(plan.closer)
    match = plan.special_run.match(text, end) if plan.special_run is not None else None
    if match is None:
        raise MaskError("the template writes no special end-of-turn token after this assistant turn, so the model "
                        "would never learn to stop; end assistant turns with one (e.g. {{ eos_token }})",
                        template=True)
    return match.end()


def tool_call_span(plan, messages, i, plain, tools):
    """An assistant turn of tool calls: the text between the conversation up to it (with the assistant header) and
    the conversation including it, which the full rendering must start with (a prefix-preserving template)."""
    if i == 0:
        raise MaskError("a conversation cannot start with an assistant tool call")
    before = render(plan, messages[:i], tools, add_generation_prompt=True)
    upto = render(plan, messages[: i + 1], tools)
    if not (upto.startswith(before) and plain.startswith(upto)):
        raise MaskError(f"the template is not prefix-preserving around the tool calls of message {i + 1}, so their "
                        "tokens cannot be located; use a template with {% generation %} markers", template=True)
    end = len(upto.rstrip(" \t\n"))
    if end <= len(before):
        raise MaskError(f"the chat template renders nothing for the tool calls of message {i + 1}")
    return (len(before), end)


def render_example(example: dict, plan: MaskPlan, loss_mode: str | None, eos: str):
    """(text, spans, is_chat) for one normalised example."""
    mode = loss_mode or default_mode(example)
    if example.get("messages") is not None:
        tools = example.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        text, spans = render_chat(plan, example["messages"], mode, example.get("_completion_turns"), tools)
        return text, spans, True
    if example.get("completion") is not None:
        prompt, completion = example["prompt"], example["completion"]
        text = prompt + completion + ("" if completion.endswith(eos) else eos)
        return text, [(0 if mode == "all" else len(prompt), len(text))], False
    if example.get("text") is not None:
        text = example["text"] + ("" if example["text"].endswith(eos) else eos)
        return text, [(0, len(text))], False
    raise MaskError("the example has no messages, prompt/completion or text")


def default_mode(example: dict) -> str:
    if example.get("messages") is not None:
        return "completion" if example.get("_completion_turns") else "assistant"
    return "completion" if example.get("completion") is not None else "all"


def render_with_fallback(example, plan, loss_mode, fallback, eos) -> list[tuple]:
    """[(text, spans, is_chat, fell_back)]: the example, or what `mask_fallback` makes of it when the template is
    why its mask cannot be established."""
    try:
        return [(*render_example(example, plan, loss_mode, eos), False)]
    except MaskError as err:
        if not err.template or fallback == "error" or example.get("messages") is None:
            raise
    if fallback == "last_assistant":
        return [(*render_example(example, plan, "last_assistant", eos), True)]
    return [(*rendered, True) for rendered in split_turn_examples(example, plan, loss_mode)]


def split_turn_examples(example: dict, plan: MaskPlan, loss_mode: str | None):
    """The `split_turns` fallback: the conversation up to each trained assistant turn, trained on that turn."""
    messages = clean_messages(example["messages"])
    mode = loss_mode or default_mode(example)
    out = []
    for i in trained_turns(messages, mode, example.get("_completion_turns")):
        text, spans = render_chat(plan, messages[: i + 1], "last_assistant", None, example.get("tools"))
        out.append((text, spans, True))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tokenizing and labelling


def encode_texts(tokenizer, texts: list[str], add_special_tokens: bool):
    """`tokenizers.Encoding`s, as `tokenizer(texts)` computes them (the backend directly when nothing differs)."""
    backend = tokenizer.backend_tokenizer
    if (backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))):
        return backend.encode_batch(texts, add_special_tokens=add_special_tokens)
    return tokenizer(texts, add_special_tokens=add_special_tokens).encodings


def token_range(encoding, start: int, end: int) -> tuple[int, int] | None:
    """[first, last] token overlapping characters [start, end); None when no token does."""
    first = last = None
    for char in range(start, end):
        first = encoding.char_to_token(char)
        if first is not None:
            break
    if first is None:
        return None
    for char in range(end - 1, start - 1, -1):
        last = encoding.char_to_token(char)
        if last is not None:
            break
    return first, last


def labels_for(encoding, spans) -> tuple[list[int], list[int]]:
    ids = encoding.ids
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        found = token_range(encoding, start, end)
        if found:
            labels[found[0]: found[1] + 1] = ids[found[0]: found[1] + 1]
    return ids, labels


def encode_batch(batch, indices, tokenizer, plan, loss_mode, max_length, truncation_mode, fallback, source):
    """`Dataset.map(batched=True)` function. A failed example is kept with its error and filtered out later."""
    size = len(indices)
    if "example" in batch:
        examples = [json.loads(s) for s in batch["example"]]
    else:  # rows of a dataset built from normalised dicts
        examples = [{key: batch[key][i] for key in batch} for i in range(size)]
    wheres = batch["where"] if "where" in batch else [f"{source}: row {i + 1}" for i in indices]
    sources = batch["source"] if "source" in batch else [0] * size
    eos = tokenizer.eos_token or ""
    items = []  # (row, text, spans, is_chat, error, fell_back)
    for row, example in enumerate(examples):
        try:
            items += [(row, text, spans, is_chat, None, fell_back)
                      for text, spans, is_chat, fell_back in render_with_fallback(example, plan, loss_mode, fallback,
                                                                                  eos)]
        except MaskError as err:
            items.append((row, "", [], True, str(err), False))

    encodings = [None] * len(items)
    for is_chat in (True, False):  # chat templates write their own special tokens; plain text gets BOS as in TRL
        chosen = [k for k, item in enumerate(items) if item[3] == is_chat and item[4] is None]
        if chosen:
            for k, encoding in zip(chosen, encode_texts(tokenizer, [items[k][1] for k in chosen], not is_chat)):
                encodings[k] = encoding

    out = {name: [] for name in COLUMNS}
    for (row, _text, spans, _chat, error, fell_back), encoding in zip(items, encodings):
        ids, labels = labels_for(encoding, spans) if encoding is not None else ([], [])
        full_trained = len(labels) - labels.count(IGNORE)
        cut = bool(max_length) and len(ids) > max_length
        if cut:
            keep = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
            ids, labels = ids[keep], labels[keep]
        trained = len(labels) - labels.count(IGNORE)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained"].append(trained)
        out["truncated"].append(cut)
        out["lost"].append(full_trained > 0 and trained == 0)
        out["error"].append(error)
        out["where"].append(wheres[row])
        out["source"].append(sources[row])
        out["fallback"].append(fell_back)
    return arrow_table(out)


def arrow_table(columns: dict):
    """The batch as an Arrow table of known types (much faster for datasets to write than inferred lists)."""
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    types = {"input_ids": ids, "labels": ids, "length": pa.int32(), "trained": pa.int32(), "truncated": pa.bool_(),
             "lost": pa.bool_(), "error": pa.string(), "where": pa.string(), "source": pa.int32(),
             "fallback": pa.bool_()}
    return pa.table({name: pa.array(columns[name], type=types[name]) for name in COLUMNS})


# ---------------------------------------------------------------------------------------------------------------
# The whole dataset


def cache_root() -> Path:
    if os.environ.get("SFT_CACHE_DIR"):
        return Path(os.environ["SFT_CACHE_DIR"])
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "sft-tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "split_special_tokens", False)).encode())
    return digest.hexdigest()


def cache_key(dataset, tokenizer, plan, settings: dict) -> str:
    """Examples + tokenizer + template + settings + versions: any change gives another key."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    header = {"v": CACHE_VERSION, "sft": version("sft"), "tokenizers": version("tokenizers"),
              "transformers": version("transformers"), "template": plan.template, "markers": plan.markers,
              "closer": plan.closer, **settings}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(dataset.column_names).encode())
    for batch in dataset.iter(batch_size=10_000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


@dataclass
class Tokenized:
    """A tokenized dataset before filtering: one row per example (or per turn with split_turns)."""

    full: object  # datasets.Dataset with input_ids, labels, length, trained, truncated, lost, error, where, ...
    cache: str  # "hit", "miss" or "off"
    plan: MaskPlan


def tokenize_all(dataset, tokenizer, loss_mode=None, max_length=None, truncation_mode="keep_start",
                 chat_template=None, mask_fallback="error", source="data", use_cache=True, plan=None) -> Tokenized:
    """Render, tokenize and mask every example; rows that fail keep their error. Cached on disk when use_cache.
    `plan`: the MaskPlan of this tokenizer and loss mode, when the caller has built it already."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__}: sft needs a fast tokenizer (tokenizer.json) to locate the "
                        "trained tokens")
    if mask_fallback not in FALLBACKS:
        raise UserError(f"mask_fallback must be one of {', '.join(FALLBACKS)}; got {mask_fallback!r}")
    if truncation_mode not in ("keep_start", "keep_end"):
        raise UserError(f"truncation_mode must be keep_start or keep_end; got {truncation_mode!r}")
    plan = plan or plan_masks(tokenizer, loss_mode, chat_template)
    kwargs = dict(tokenizer=tokenizer, plan=plan, loss_mode=loss_mode, max_length=max_length,
                  truncation_mode=truncation_mode, fallback=mask_fallback, source=source)
    map_args = dict(batched=True, batch_size=512, with_indices=True, remove_columns=dataset.column_names,
                    fn_kwargs=kwargs, desc="Rendering, tokenizing and masking")
    if not use_cache or len(dataset) == 0:
        return Tokenized(dataset.map(encode_batch, keep_in_memory=True, **map_args), "off", plan)
    settings = {"loss_mode": loss_mode, "max_length": max_length, "truncation_mode": truncation_mode,
                "fallback": mask_fallback, "source": source}
    key = cache_key(dataset, tokenizer, plan, settings)
    path = cache_root() / f"{key}.arrow"
    hit = path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    full = dataset.map(encode_batch, cache_file_name=str(path), load_from_cache_file=True, new_fingerprint=key,
                       **map_args)
    return Tokenized(full, "hit" if hit else "miss", plan)


def column(dataset, name) -> list:
    return dataset.data.column(name).to_pylist() if dataset._indices is None else dataset[name]


def summarise(tokenized: Tokenized, source: str, skip_bad_rows: bool, max_dropped_fraction: float, max_length):
    """(indices of rows to train on, stats, problems) of a tokenized dataset."""
    full = tokenized.full
    errors, wheres = column(full, "error"), column(full, "where")
    trained, lengths = column(full, "trained"), column(full, "length")
    lost, truncated, fallback = column(full, "lost"), column(full, "truncated"), column(full, "fallback")
    problems = []
    bad = [(wheres[i], errors[i]) for i in range(len(full)) if errors[i]]
    bad += [(wheres[i], "no token would be trained in this example") for i in range(len(full))
            if not errors[i] and trained[i] == 0 and not lost[i]]
    if bad and not skip_bad_rows:
        problems.append(describe_bad_rows(bad))
    n_lost = sum(lost)
    if full and n_lost / len(full) > max_dropped_fraction:
        problems.append(f"{source}: {n_lost} of {len(full)} examples lose every trained token to "
                        f"max_length={max_length} (more than max_dropped_fraction={max_dropped_fraction}); raise "
                        "max_length or use truncation_mode: keep_end")
    keep = [i for i in range(len(full)) if trained[i] > 0 and not errors[i]]
    if not keep and not problems:
        problems.append(f"{source}: no example is left to train on")
    kept_lengths = sorted(lengths[i] for i in keep)
    stats = {
        "examples": len(full),
        "kept": len(keep),
        "dropped_truncated": n_lost,
        "skipped_bad": len(bad),
        "tokens": sum(kept_lengths),
        "trained_tokens": sum(trained[i] for i in keep),
        "truncated": sum(1 for i in keep if truncated[i]),
        "fallback": sum(1 for i in keep if fallback[i]),
        "length_percentiles": percentiles(kept_lengths),
        "cache": tokenized.cache,
        "masks": tokenized.plan.description,
    }
    return keep, stats, problems


def describe_bad_rows(bad: list[tuple[str, str]]) -> str:
    where, reason = bad[0]
    more = f" ({len(bad) - 1} more bad rows, e.g. {bad[1][0]}: {bad[1][1]})" if len(bad) > 1 else ""
    return f"{where}: {reason}{more}; fix the data or set skip_bad_rows: true to skip and count such rows"


def percentiles(sorted_values: list[int]) -> dict:
    if not sorted_values:
        return {}
    pick = lambda q: sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": sorted_values[-1]}


def tokenize_dataset(dataset, tokenizer, loss_mode=None, max_length=None, truncation_mode="keep_start",
                     chat_template=None, source="data", skip_bad_rows=False, max_dropped_fraction=0.5,
                     keep_stats=False, mask_fallback="error", use_cache=False):
    """Normalised examples -> (dataset of input_ids/labels, stats). Problems raise one UserError naming the row."""
    tokenized = tokenize_all(dataset, tokenizer, loss_mode, max_length, truncation_mode, chat_template,
                             mask_fallback, source, use_cache)
    keep, stats, problems = summarise(tokenized, source, skip_bad_rows, max_dropped_fraction, max_length)
    if problems:
        raise UserError(problems[0])
    result = tokenized.full.select(keep)
    if not keep_stats:
        result = result.select_columns(["input_ids", "labels"])
    return result, stats
