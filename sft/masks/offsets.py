"""Labels from the tokenizer's offsets: a token is trained when its characters overlap a trained span (the first and
the last token of a span are found with `char_to_token`, as transformers does), so tokens that merge across a
boundary are handled as in TRL's masks. Byte-level BPE chat texts are labelled from byte lengths instead
(sft.masks.byte_offsets), and sampled rows are compared with these labels."""

from sft.masks.plan import IGNORE


def plain_backend(tokenizer) -> bool:
    """Whether `tokenizer(texts)` is the backend's own encoding (no truncation, padding or special-token change)."""
    backend = tokenizer.backend_tokenizer
    return (backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)))


def encode_texts(tokenizer, texts: list[str], add_special_tokens: bool):
    """`tokenizers.Encoding`s, as `tokenizer(texts)` computes them (the backend directly when nothing differs)."""
    if plain_backend(tokenizer):
        return tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
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


def token_parts(encoding, parts) -> list[list[int]]:
    """Reasoning / tool-call character spans as [first token, end token, kind]."""
    out = []
    for start, end, kind in parts:
        found = token_range(encoding, start, end)
        if found:
            out.append([found[0], found[1] + 1, kind])
    return out
