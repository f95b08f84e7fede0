"""The definition of trained tokens, written out literally for the tests (independent of sft.masks' code):

for each assistant turn i, P = the conversation before it rendered with add_generation_prompt=True and F = the
conversation through it (where that drops the turn's own reasoning and P ends in <think>: rendered with the
reasoning inline and its </think> hidden from the template, so the reasoning is kept; a </think> the template writes
before that <think>, as for a turn without reasoning, is left out); the trained text is F after
P, up to and including the first generation stop token; where the template writes no stop token, up to its last
special token; where it writes no token after the last turn, plus the stop token it writes before the next turn."""

import os
import re

IGNORE = -100


def render(tokenizer, messages, tools=None, generation_prompt=False, **kwargs):
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt, **kwargs)


def specials_of(tokenizer) -> list[str]:
    tokens = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()
                                                  if t.special}
    return sorted((t for t in tokens if t), key=len, reverse=True)


def definition(tokenizer, messages, tools=None, stops=(), **kwargs):
    """[(P, trained text)] for every assistant turn, or a string saying why the definition cannot place one."""
    stops = [t for t in [tokenizer.eos_token, *stops] if t]
    special = re.compile("|".join(map(re.escape, specials_of(tokenizer))))
    leading_special = re.compile(r"\s*(" + special.pattern + ")")
    out = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], tools, True, **kwargs)
        full = render(tokenizer, messages[: i + 1], tools, **kwargs)
        before = render(tokenizer, messages[:i], tools, **kwargs)
        conversation = messages
        answer = full[len(os.path.commonprefix([prompt, full])):]
        content = message.get("content")
        field = message.get("reasoning_content", message.get("thinking"))
        given = isinstance(content, str) and ("</think>" in content or (isinstance(field, str) and field.strip()))
        if given and "</think>" not in answer and prompt.rstrip().endswith("<think>"):
            # reasoning dropped even from this turn (DeepSeek-R1): the content as generated after P's <think>
            opening = prompt[prompt.rindex("<think>"):]
            content = content.lstrip()
            if "</think>" in content:
                if not content.startswith(opening):
                    content = opening + (content[7:].lstrip() if content.startswith("<think>") else content)
            else:  # a reasoning field, written as DeepSeek-R1 writes its reasoning
                closing = "\n</think>\n\n" if opening.endswith("\n") else "</think>"
                content = opening + field.strip() + closing + content
            kept = {k: v for k, v in message.items() if k not in ("reasoning_content", "thinking")}
            kept["content"] = content.replace("</think>", "\x00")
            kept_full = render(tokenizer, messages[:i] + [kept], tools, **kwargs).replace("\x00", "</think>")
            # DeepSeek-V3.1 in thinking mode writes </think> (no reasoning) after the header, where P writes <think>
            marked = prompt[:len(prompt) - len(opening)] + "</think>" + opening
            if kept_full.startswith(marked) and prompt.startswith(before):
                kept_full = prompt + kept_full[len(marked):]
            if kept_full.startswith(prompt) and "</think>" in kept_full[len(prompt):]:
                conversation, full = messages[:i] + [kept] + messages[i + 1:], kept_full
        common = len(os.path.commonprefix([prompt, full]))
        if full.startswith(prompt):
            generated = full[len(prompt):]
        elif full.startswith(before) and common >= len(before):  # P ends with text F does not follow (R1-Distill)
            prompt, generated = full[:common], full[common:]
        else:  # the conversation so far renders differently once the answer follows: align on P's longest end
            length = next((n for n in range(len(prompt), 0, -1) if prompt[-n:] in full), 0)
            previous = messages[i - 1].get("content") or ""
            if not length or (isinstance(previous, str) and previous.strip() not in prompt[-length:]):
                return f"message {i + 1}: F does not continue P"
            generated = full[full.index(prompt[-length:]) + length:]
        hits = [(generated.find(s), s) for s in stops if s in generated]
        if hits:
            position, token = min(hits)
            out.append((prompt, generated[: position + len(token)]))
            continue
        ends = [m for m in special.finditer(generated) if not generated[m.end():].strip()]
        if ends:
            out.append((prompt, generated[: ends[0].end()]))
            continue
        whole = render(tokenizer, conversation, tools, **kwargs).replace("\x00", "</think>")
        match = leading_special.match(whole, len(prompt + generated)) if whole.startswith(prompt + generated) else None
        if not (match and match.group(1) in stops):
            probe = render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                       {"role": "user", "content": "Bye"}], **kwargs)
            match = leading_special.match(probe.split("Hello", 1)[1])
        if not (match and match.group(1) in stops):
            return f"message {i + 1}: no token ends it"
        out.append((prompt, generated + match.group(0)))
    return out


def runs_of(labels) -> list[tuple[int, int]]:
    runs, start = [], None
    for k, label in enumerate(list(labels) + [IGNORE]):
        if label != IGNORE and start is None:
            start = k
        elif label == IGNORE and start is not None:
            runs.append((start, k))
            start = None
    return runs


def mismatch(tokenizer, rows, turns) -> str | None:
    """None when the rows (one conversation's examples) train exactly the turns of the definition: the text up to
    each trained run's end is exactly P + trained of one turn (the turn is trained in the context the model sees),
    the run starts at the turn (its first token may merge across the boundary with the header), and every turn is
    trained once."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False,  # noqa: E731
                                          clean_up_tokenization_spaces=False)
    left = list(turns)
    for row in rows:
        ids = row["input_ids"]
        for a, b in runs_of(row["labels"]):
            if row["labels"][a:b] != ids[a:b]:
                return "labels differ from input_ids inside a trained run"
            context = decode(ids[:b])
            found = [t for t in left if t[0] + t[1] == context]
            if not found:
                return f"a trained run matches no turn: {context[-160:]!r}; turns: {[t[1] for t in left]}"
            prompt, trained = found[0]
            left.remove(found[0])
            boundary = len(prompt.encode())  # the first trained token holds the first generated byte
            if not byte_length(tokenizer, ids[:a]) <= boundary < byte_length(tokenizer, ids[:a + 1]):
                return f"trained {decode(ids[a:b])!r} != {trained!r}"
    if left:
        return f"{len(left)} assistant turns not trained: {[t[1] for t in left]}"
    return None


def byte_length(tokenizer, ids) -> int:
    """UTF-8 length of the text of `ids` (byte-level BPE tokens may hold part of a character)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    specials = set(specials_of(tokenizer)) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    total = 0
    for token in tokenizer.convert_ids_to_tokens(ids):
        total += len(token.encode()) if token in specials else sum(1 for char in token if char in byte_of)
    return total


def template_tokenizer(template: str, specials=None):
    """A byte-level BPE tokenizer with `template`, and its special tokens (found in the template when not given)
    added as a real model's tokenizer has them."""
    from sft.tiny import build_tokenizer

    if specials is None:
        specials = sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>|<\|[a-z_]+>|<[a-z_]+\|>|<[a-z_]+>|\[/?[A-Z_]+\]|"
                                         r"<｜[^｜]+｜>", template)))
    tokenizer = build_tokenizer("bpe", chat_template=template)
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)}, replace_extra_special_tokens=False)
    return tokenizer
