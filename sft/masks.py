"""Render, tokenize and mask: normalised examples become `input_ids` and `labels` (-100 where not trained).

How chat masks work for any template, with or without `{% generation %}` markers: every assistant content is
wrapped in two private-use sentinel characters, the conversation is rendered once, and the sentinels give the
exact character span of each content. The span is extended over the special tokens the template puts right
after it (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`...), which is what the model must emit to stop.
The sentinels are removed, the text is checked against a normal rendering (a template that trims or rewrites
content is caught here), and tokens are trained when their characters overlap a trained span - so a token
that merges across a boundary is handled the same way as TRL's `return_assistant_tokens_mask`.
"""

import re

from sft.errors import UserError

OPEN, CLOSE = "\ue000", "\ue001"
IGNORE = -100


class MaskError(ValueError):
    """The trained tokens of one example cannot be established; the message says why."""


def special_token_pattern(tokenizer) -> re.Pattern:
    specials = set(tokenizer.all_special_tokens)
    specials |= {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
    specials.discard(tokenizer.pad_token)
    alternatives = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True) if t)
    # Whitespace the template writes between the content and its end token is trained too: the model emits it.
    return re.compile(rf"(?:[ \t\n]*(?:{alternatives}))+") if alternatives else re.compile(r"(?!x)x")


def trained_turns(messages: list[dict], loss_mode: str, completion_turns: int | None = None) -> list[int]:
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if completion_turns:  # conversational prompt/completion: the completion's turns are the answer
        assistant = [i for i in assistant if i >= len(messages) - completion_turns]
    if loss_mode in ("last_assistant", "completion"):
        return assistant[-1:]
    return assistant


def render_chat(tokenizer, messages, loss_mode, end_pattern, completion_turns=None, chat_template=None):
    """(text, [(start, end) trained char spans]) for one conversation."""
    if messages[-1].get("role") != "assistant":
        raise MaskError("the conversation ends on a " + str(messages[-1].get("role")) + " turn, not an assistant turn")
    for m in messages:
        if m.get("role") == "assistant" and not (m.get("content") or m.get("tool_calls")):
            raise MaskError("an assistant turn has empty content")
        if isinstance(m.get("content"), str) and (OPEN in m["content"] or CLOSE in m["content"]):
            raise MaskError("content holds reserved characters U+E000/U+E001")
    plain = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template)
    if loss_mode == "all":
        return plain, [(0, len(plain))]
    wanted = trained_turns(messages, loss_mode, completion_turns)
    marked_msgs = [
        {**m, "content": OPEN + m["content"] + CLOSE} if i in wanted and isinstance(m.get("content"), str) else m
        for i, m in enumerate(messages)
    ]
    marked = tokenizer.apply_chat_template(marked_msgs, tokenize=False, chat_template=chat_template)
    text, spans, pos = [], [], 0
    for piece in re.finditer(f"{OPEN}(.*?){CLOSE}", marked, flags=re.S):
        text.append(marked[pos:piece.start()])
        start = sum(map(len, text))
        text.append(piece.group(1))
        spans.append([start, start + len(piece.group(1))])
        pos = piece.end()
    text.append(marked[pos:])
    text = "".join(text)
    if len(spans) != len(wanted):
        raise MaskError(f"the template dropped {len(wanted) - len(spans)} of {len(wanted)} assistant turns")
    if text != plain:
        raise MaskError("the template rewrites assistant content (e.g. trims it or strips earlier reasoning), so "
                        "trained tokens cannot be located; clean the content or use loss_mode: last_assistant")
    for span in spans:
        end = end_pattern.match(text, span[1])
        if end is None:
            raise MaskError("the template writes no special end-of-turn token after an assistant turn, so the "
                            "model would never learn to stop; use a template that ends turns with one")
        span[1] = end.end()
    return text, [tuple(s) for s in spans]


def render_example(example, tokenizer, loss_mode, end_pattern, chat_template=None):
    if example.get("messages") is not None:
        return render_chat(tokenizer, example["messages"], loss_mode, end_pattern,
                           example.get("_completion_turns"), chat_template)
    eos = tokenizer.eos_token or ""
    if example.get("completion") is not None:
        prompt, completion = example["prompt"], example["completion"]
        text = prompt + completion + ("" if completion.endswith(eos) else eos)
        return text, [(0 if loss_mode == "all" else len(prompt), len(text))]
    text = example["text"] + eos
    return text, [(0, len(text))]


def labels_from_offsets(input_ids, offsets, spans) -> list[int]:
    labels = []
    for token, (start, end) in zip(input_ids, offsets):
        trained = any(start < b and end > a for a, b in spans) if end > start else False
        labels.append(token if trained else IGNORE)
    return labels


def encode_batch(batch, tokenizer, loss_mode, max_length, truncation_mode, end_pattern, chat_template, row_offset):
    """Datasets `map(batched=True)` function. Failed rows are kept with an error string and filtered later."""
    size = len(next(iter(batch.values())))
    texts, spans, errors = [], [], []
    for i in range(size):
        example = {key: batch[key][i] for key in batch}
        try:
            text, example_spans = render_example(example, tokenizer, loss_mode, end_pattern, chat_template)
            errors.append(None)
        except MaskError as err:
            text, example_spans = "", []
            errors.append(str(err))
        texts.append(text)
        spans.append(example_spans)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = {"input_ids": [], "labels": [], "length": [], "trained": [], "truncated": [], "error": errors}
    for ids, offsets, example_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans):
        labels = labels_from_offsets(ids, offsets, example_spans)
        full_trained = sum(label != IGNORE for label in labels)
        if max_length and len(ids) > max_length:
            cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
            ids, labels = ids[cut], labels[cut]
        trained = sum(label != IGNORE for label in labels)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained"].append(trained)
        out["truncated"].append(full_trained > 0 and trained == 0)
    return out


def tokenize_dataset(dataset, tokenizer, loss_mode, max_length=None, truncation_mode="keep_start",
                     chat_template=None, source="data", skip_bad_rows=False, max_dropped_fraction=0.5,
                     keep_stats=False):
    """Normalised dataset -> (dataset of input_ids/labels, stats). Bad rows raise UserError naming the row."""
    end_pattern = special_token_pattern(tokenizer)
    encoded = dataset.map(
        encode_batch,
        batched=True,
        batch_size=256,
        remove_columns=dataset.column_names,
        fn_kwargs=dict(tokenizer=tokenizer, loss_mode=loss_mode, max_length=max_length,
                       truncation_mode=truncation_mode, end_pattern=end_pattern, chat_template=chat_template,
                       row_offset=0),
        desc="Rendering, tokenizing and masking",
    )
    errors = encoded["error"]
    bad = [(i, e) for i, e in enumerate(errors) if e]
    if bad and not skip_bad_rows:
        row, reason = bad[0]
        more = f" ({len(bad) - 1} more rows fail)" if len(bad) > 1 else ""
        raise UserError(f"{source}: row {row + 1}: {reason}{more} (or set skip_bad_rows: true)")
    truncated = encoded["truncated"]
    trained = encoded["trained"]
    untrained = [i for i, (t, e) in enumerate(zip(trained, errors)) if t == 0 and not truncated[i] and not e]
    if untrained and not skip_bad_rows:
        raise UserError(f"{source}: row {untrained[0] + 1}: no token would be trained in this example")
    n_dropped = sum(truncated)
    total = len(encoded)
    if total and n_dropped / total > max_dropped_fraction:
        raise UserError(
            f"{source}: {n_dropped} of {total} examples lose every trained token to max_length={max_length}; "
            "raise max_length or use truncation_mode: keep_end"
        )
    keep = [i for i in range(total) if trained[i] > 0 and not errors[i]]
    stats = {
        "examples": total,
        "kept": len(keep),
        "dropped_truncated": n_dropped,
        "skipped_bad": len(bad) + (len(untrained) if skip_bad_rows else 0),
        "tokens": sum(encoded["length"][i] for i in keep),
        "trained_tokens": sum(trained[i] for i in keep),
        "truncated": sum(1 for i in keep if encoded["length"][i] == max_length),
    }
    result = encoded.select(keep)
    if not keep_stats:
        result = result.remove_columns(["length", "trained", "truncated", "error"])
    if len(result) == 0:
        raise UserError(f"{source}: no example is left to train on")
    return result, stats
