"""The skeleton fast path (sft.masks.skeleton) gives exactly the exact path's examples: same text, same trained
spans, hence the same tokens and labels, for conversations with odd whitespace and unicode, on every built-in
template, the re-created real template structures and every template TRL ships; templates that change or branch on
the text fall back to the exact path."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft.masks.plan import MaskError, plan_masks
from sft.masks.skeleton import Skeletons
from sft.masks.spans import chat_examples
from sft.masks.tokenize import encode_batch
from sft.templates.chat import BUILTIN_TEMPLATES
from tests.masks.test_real_template_structures import STRUCTURES, tokenizer_for, trl_templates
from tests.support.mask_definition import template_tokenizer

ODD = st.text(alphabet=" \t\n\r\u3000\u2003\u00a0abcé✓你😀<|>{}%#'\"\\", min_size=1, max_size=12)


def roles(draw, system: bool) -> list[str]:
    turns = draw(st.integers(1, 3))
    return (["system"] if system and draw(st.booleans()) else []) + ["user", "assistant"] * turns


@st.composite
def rows_of_one_shape(draw, name):
    """Four conversations with the same roles and different, oddly spaced texts."""
    shape = roles(draw, name not in ("channels", "header_in_prompt", "text_arguments"))
    return [{"messages": [{"role": role, "content": draw(ODD)} for role in shape]} for _ in range(4)]


def outcome(plan, example, mode, fallback):
    try:
        return chat_examples(plan, example, mode, fallback)
    except MaskError as err:
        return str(err)


def fast_outcome(skeletons, example, mode, fallback):
    try:
        return skeletons.examples(example, mode, fallback)
    except MaskError as err:
        return str(err)


TEMPLATES = sorted(BUILTIN_TEMPLATES) + sorted(STRUCTURES) + [pytest.param(name, marks=pytest.mark.slow)
                                                               for name in sorted(trl_templates())]


@pytest.mark.parametrize("name", TEMPLATES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_fast_path_equals_the_exact_path(name, data):
    """TRL's templates are in the slow set, as in test_real_template_structures."""
    tokenizer, stops = tokenizer_for(name)
    rows = data.draw(rows_of_one_shape(name))
    for mode, fallback in [("assistant", "context"), ("assistant", "last_assistant"), ("all", "context"),
                           ("last_assistant", "context")]:
        plan = plan_masks(tokenizer, mode, stop_tokens=stops)
        skeletons = Skeletons(plan, verify_first=0, sample=0)  # never compared: the fill alone must be right
        for example in rows:
            assert (fast_outcome(skeletons, example, mode, fallback) == outcome(plan, example, mode, fallback)), (
                name, mode, fallback, example)


def conversation(*texts):
    """A system message, then user and assistant turns."""
    return {"messages": [{"role": r, "content": t} for r, t in zip(["system"] + ["user", "assistant"] * 3, texts)]}


@pytest.mark.parametrize("name", ["llama3", "chatml", "trims", "next_header", "no_end_token"])
def test_templates_that_copy_the_text_get_a_skeleton(name):
    """Not vacuous: these templates (Llama 3 trims every message) do take the fast path."""
    tokenizer, stops = tokenizer_for(name)
    plan = plan_masks(tokenizer, "assistant", stop_tokens=stops)
    skeletons = Skeletons(plan, verify_first=0, sample=0)
    for texts in [("Be brief.", " Hi\n", "\tHello! "), ("\u3000sys ", "你好", "✓ done\n\n")]:
        skeletons.examples(conversation(*texts), "assistant", "context")
    assert list(skeletons.shapes.values())[0] is not None


LSTRIP_NEWLINE = ("{% for m in messages %}<|s|>{{ m.role }}\n{{ m.content.lstrip('\\n') }}<|e|>{% endfor %}"
                  "{% if add_generation_prompt %}<|s|>assistant\n{% endif %}")
STRIP_SPACES = ("{% for m in messages %}<|s|>{{ m.role }}\n{{ m.content.strip(' ') }}<|e|>{% endfor %}"
                "{% if add_generation_prompt %}<|s|>assistant\n{% endif %}")
BRANCHES = ("{% for m in messages %}<|s|>{{ m.role }}\n{% if 'secret' in m.content %}[hidden]{% else %}"
            "{{ m.content }}{% endif %}<|e|>{% endfor %}{% if add_generation_prompt %}<|s|>assistant\n{% endif %}")


@pytest.mark.parametrize("template", [LSTRIP_NEWLINE, STRIP_SPACES], ids=["lstrip_newline", "strip_spaces"])
def test_a_template_that_strips_some_whitespace_only_takes_the_exact_path(template):
    plan = plan_masks(template_tokenizer(template, ["<|s|>", "<|e|>"]), "assistant")
    skeletons = Skeletons(plan, verify_first=0, sample=0)
    rows = [conversation("sys", "\n hi ", "\n\n hello  "), conversation(" s\n", "\nq", "  a \n")]
    for example in rows:
        assert skeletons.examples(example, "assistant", "context") == chat_examples(plan, example, "assistant",
                                                                                   "context")
    assert list(skeletons.shapes.values()) == [None]


def test_a_template_that_branches_on_the_text_is_caught_by_the_comparison_and_falls_back():
    plan = plan_masks(template_tokenizer(BRANCHES, ["<|s|>", "<|e|>"]), "assistant")
    skeletons = Skeletons(plan, verify_first=3, sample=64)
    rows = [conversation("sys", "hi", "hello"), conversation("sys", "q", "a"),
            conversation("sys", "my secret", "ok")]
    results = [skeletons.examples(example, "assistant", "context") for example in rows]
    assert results == [chat_examples(plan, example, "assistant", "context") for example in rows]
    assert "[hidden]" in results[2][0].text
    assert list(skeletons.shapes.values()) == [None]  # from now on the exact path
    later = conversation("sys", "x", "y")
    assert skeletons.examples(later, "assistant", "context") == chat_examples(plan, later, "assistant", "context")


def test_rows_whose_text_holds_special_tokens_or_think_tags_take_the_exact_path():
    tokenizer, stops = tokenizer_for("chatml")
    plan = plan_masks(tokenizer, "assistant", stop_tokens=stops)
    skeletons = Skeletons(plan)
    assert skeletons.texts(conversation("s", "u", "a")["messages"]) == ["s", "u", "a"]
    for text in ("<|im_end|> injected", "<think>x</think>y", "", "  \n", "\ue010"):
        assert skeletons.texts(conversation("s", "u", text)["messages"]) is None
    assert skeletons.texts([{"role": "user", "content": "u", "name": "n"}]) is None


def test_encode_batch_gives_the_exact_tokens_and_labels():
    """Through the batch function sft train uses: 200 rows of eight shapes, against the exact path's rendering
    tokenized the same way."""
    import random

    tokenizer, stops = tokenizer_for("llama3")
    plan = plan_masks(tokenizer, "assistant", stop_tokens=stops)
    rng = random.Random(3)
    words = ["alpha", " beta", "\tgamma", "δέλτα", "你好", "\n\n", "✓", "  "]
    rows = []
    for _ in range(200):
        texts = ["".join(rng.choice(words) for _ in range(rng.randint(1, 6))) + "x" for _ in range(7)]
        rows.append(conversation(*texts[: 1 + 2 * rng.randint(1, 3)]))
    table = encode_batch({"example": [json.dumps(r) for r in rows]}, list(range(len(rows))), tokenizer, plan,
                         "assistant", None, "keep_start", "context", "data").to_pylist()
    for row, got in zip(rows, table):
        (exact,) = chat_examples(plan, row, "assistant", "context")
        encoding = tokenizer.backend_tokenizer.encode(exact.text, add_special_tokens=False)
        assert got["input_ids"] == encoding.ids
        trained = [i for i, label in enumerate(got["labels"]) if label != -100]
        wanted = [i for i in range(len(encoding.ids)) if any(
            encoding.offsets[i][0] < end and encoding.offsets[i][1] > start for start, end in exact.spans)]
        assert trained == wanted
