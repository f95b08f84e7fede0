"""Labels from byte lengths (sft.masks.byte_offsets) equal the labels from the tokenizer's offsets, on texts with
multi-byte characters split across tokens, odd whitespace and special tokens; tokenizers whose offsets are not
plain byte ranges are left to the offsets; a row or a sample that disagrees takes the offsets."""

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft.masks.byte_offsets import byte_lengths, forget_byte_lengths, labels_from_lengths
from sft.masks.plan import plan_masks
from sft.masks.spans import chat_examples
from sft.masks.offsets import labels_for
from sft.masks.tokenize import Item, agrees_with_offsets, encode_batch, tokens_of
from sft.masks.spans import Rendered
from tests.masks.test_real_template_structures import tokenizer_for

ODD = st.text(alphabet=" \t\n\r\u3000\u2003\u00a0abcé✓你😀<|>{}%#'\"\\", min_size=0, max_size=40)
SPECIALS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_layout_tokenizer():
    """A BPE tokenizer laid out as Llama 3's tokenizer.json is: a regex Split then ByteLevel without its regex,
    and a ByteLevel post-processor that does not trim offsets."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False)
    corpus = ["héllo wörld 你好 ✓ the model answers 😀 questions\n\n  indented\ttabs"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module", params=["tiny_bpe", "llama3_layout"])
def tokenizer(request):
    return tokenizer_for("llama3")[0] if request.param == "tiny_bpe" else llama3_layout_tokenizer()


@st.composite
def texts_with_spans(draw):
    pieces = draw(st.lists(st.one_of(ODD, st.sampled_from(SPECIALS)), min_size=1, max_size=8))
    text = "".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=6)))
    return text, list(zip(cuts[::2], cuts[1::2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(rows=st.lists(texts_with_spans(), min_size=1, max_size=6))
def test_labels_from_byte_lengths_equal_labels_from_offsets(tokenizer, rows):
    lengths = byte_lengths(tokenizer)
    assert lengths is not None
    backend = tokenizer.backend_tokenizer
    texts = [text for text, _ in rows]
    ids_rows = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    got = labels_from_lengths(lengths, texts, ids_rows, [spans for _, spans in rows])
    for (text, spans), ids, (got_ids, labels) in zip(rows, ids_rows, got):
        encoding = backend.encode(text, add_special_tokens=False)
        assert (got_ids.tolist(), labels.tolist()) == labels_for(encoding, spans) and got_ids.tolist() == ids, (
            text, spans)


def test_a_split_multibyte_character_trains_the_first_token_holding_it_as_char_to_token_does(tokenizer):
    text = "a😀b"
    backend = tokenizer.backend_tokenizer
    ids = backend.encode_batch_fast([text], add_special_tokens=False)[0].ids
    encoding = backend.encode(text, add_special_tokens=False)
    assert len(ids) > 3  # the emoji's four bytes are more than one token
    ((_, labels),) = labels_from_lengths(byte_lengths(tokenizer), [text], [ids], [[(1, 2)]])
    assert labels.tolist() == labels_for(encoding, [(1, 2)])[1]
    assert labels[1] == ids[1] and labels[0] == -100 and labels[-1] == -100


def test_tokenizers_whose_offsets_are_not_byte_ranges_are_left_to_the_offsets():
    from tokenizers import normalizers, pre_tokenizers, processors

    from sft.tiny import build_tokenizer

    assert byte_lengths(build_tokenizer("char")) is None  # one token per character, not a byte-level vocabulary
    changed = {
        "trimmed offsets": lambda b: setattr(b, "post_processor", processors.ByteLevel(trim_offsets=True)),
        "prefix space": lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)),
        "normalizer": lambda b: setattr(b, "normalizer", normalizers.NFKC()),
    }
    for name, change in changed.items():
        tokenizer = build_tokenizer("bpe")
        assert byte_lengths(tokenizer) is not None
        tokenizer = build_tokenizer("bpe")
        change(tokenizer.backend_tokenizer)
        assert byte_lengths(tokenizer) is None, name
    stripping = build_tokenizer("bpe")
    from tokenizers import AddedToken

    stripping.add_special_tokens({"additional_special_tokens": [AddedToken("<x>", lstrip=True)]},
                                 replace_extra_special_tokens=False)
    assert byte_lengths(stripping) is None


def test_a_row_whose_lengths_do_not_add_up_is_left_to_the_offsets():
    tokenizer = tokenizer_for("llama3")[0]
    lengths = byte_lengths(tokenizer)
    ids = tokenizer.backend_tokenizer.encode_batch_fast(["hello there", "abc"], add_special_tokens=False)
    rows = labels_from_lengths(lengths, ["hello there", "abcd"], [e.ids for e in ids], [[(0, 5)], [(0, 2)]])
    assert rows[0] is not None and rows[1] is None


def test_a_sample_that_disagrees_sends_the_process_back_to_the_offsets():
    tokenizer = llama3_layout_tokenizer()
    rendered = Rendered("<|start_header_id|>user<|end_header_id|>\n\nhi there<|eot_id|>", [(42, 50)])
    ids = tokenizer.backend_tokenizer.encode_batch_fast([rendered.text], add_special_tokens=False)[0].ids
    (right,) = labels_from_lengths(byte_lengths(tokenizer), [rendered.text], [ids], [rendered.spans])
    assert agrees_with_offsets(tokenizer, [rendered.text], [right], [rendered], [0])
    wrong = (right[0], np.full(len(ids), -100, np.int32))
    assert not agrees_with_offsets(tokenizer, [rendered.text], [wrong], [rendered], [0])
    forget_byte_lengths(tokenizer)
    assert byte_lengths(tokenizer) is None
    (tokens,) = tokens_of(tokenizer, [Item(0, rendered)])
    assert (tokens[0].tolist(), tokens[1].tolist()) == labels_for(
        tokenizer.backend_tokenizer.encode(rendered.text, add_special_tokens=False), rendered.spans)


def test_encode_batch_on_the_fast_path_gives_the_exact_tokens_and_labels():
    """300 conversations with unicode and odd whitespace through the batch function sft train uses, with the byte
    lengths in use for every row, against the exact path tokenized with offsets."""
    import random

    tokenizer, stops = tokenizer_for("llama3")
    assert byte_lengths(tokenizer) is not None
    plan = plan_masks(tokenizer, "assistant", stop_tokens=stops)
    rng = random.Random(5)
    words = ["alpha", " beta", "\tgamma", "δέλτα", "你好", "\n\n", "✓", "  ", "😀", "\u3000"]
    rows = []
    for _ in range(300):
        texts = ["".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + "z" for _ in range(5)]
        roles = ["user", "assistant"] * 2
        rows.append({"messages": [{"role": r, "content": t} for r, t in zip(roles, texts[:2 * rng.randint(1, 2)])]})
    table = encode_batch({"example": [json.dumps(r) for r in rows]}, list(range(len(rows))), tokenizer, plan,
                         "assistant", None, "keep_start", "context", "data").to_pylist()
    assert byte_lengths(tokenizer) is not None  # no sampled row disagreed
    for row, got in zip(rows, table):
        (exact,) = chat_examples(plan, row, "assistant", "context")
        ids, labels = labels_for(tokenizer.backend_tokenizer.encode(exact.text, add_special_tokens=False),
                                 exact.spans)
        assert (got["input_ids"], got["labels"]) == (ids, labels)
        assert re.search(r"\S", tokenizer.decode([t for t in got["labels"] if t != -100]))
