"""Masks for the structures real chat templates have (each template here written for this test, with the same
structure as a published one): the trained tokens are exactly the definition (tests/support/mask_definition.py)
for random conversations x every built-in template, these re-creations, and every template TRL ships."""

import json
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft.templates.chat import BUILTIN_TEMPLATES, builtin_template
from sft.masks.plan import plan_masks
from sft.masks.tokenize import encode_batch
from sft.masks.plan import with_text_arguments
from tests.support.mask_definition import definition, mismatch, runs_of, template_tokenizer

THINK = ("{%- set reasoning = m.reasoning_content if m.reasoning_content is string else "
         "(m.content.split('</think>')[0].split('<think>')[-1] if '</think>' in m.content else '') -%}"
         "{%- set answer = m.content.split('</think>')[-1] -%}")
CALLS = ("{%- for c in m.tool_calls or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>"
         "{%- endfor %}")

# name -> (template, special tokens, generation stop tokens besides eos </s>)
STRUCTURES = {
    # Llama-3.2-like: every message trimmed.
    "trims": ("{% for m in messages %}<|hdr|>{{ m.role }}<|/hdr|>{{ m.content | trim }}<|eot|>{% endfor %}"
              "{% if add_generation_prompt %}<|hdr|>assistant<|/hdr|>{% endif %}",
              ["<|hdr|>", "<|/hdr|>", "<|eot|>"], ["<|eot|>"]),
    # Qwen3-like: reasoning as a field or inline, rendered only after the last user turn; the answer lstripped.
    "drops_reasoning": ("{%- set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}"
                        "{% set ns.last = loop.index0 %}{% endif %}{% endfor -%}"
                        "{% for m in messages %}{% if m.role == 'assistant' %}" + THINK +
                        "<|im_start|>assistant\n{% if loop.index0 > ns.last and reasoning %}<think>{{ reasoning }}"
                        "</think>{% endif %}{{ answer.lstrip() }}" + CALLS + "<|im_end|>\n"
                        "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                        ["<think>", "</think>"], ["<|im_end|>"]),
    # Seed-OSS-like: a reasoning_content field rendered in every turn, between its own special tokens.
    "reasoning_field": ("{% for m in messages %}<|s|>{{ m.role }}\n{% if m.role == 'assistant' %}" + THINK +
                        "{% if reasoning %}<|think|>{{ reasoning }}<|/think|>{% endif %}{{ answer }}" + CALLS +
                        "{% else %}{{ m.content }}{% endif %}<|e|>{% endfor %}"
                        "{% if add_generation_prompt %}<|s|>assistant\n{% endif %}",
                        ["<|s|>", "<|e|>", "<|think|>", "<|/think|>"], ["<|e|>"]),
    # Command R7B-like: the next turn's header written even without add_generation_prompt; the answer wrapped in
    # response markers the model writes itself.
    "next_header": ("{% for m in messages %}<|SOT|>{% if m.role == 'assistant' %}<|BOT|><|RS|>{{ m.content }}"
                    "<|RE|>{% else %}<|{{ 'SYS' if m.role == 'system' else 'USR' }}|>{{ m.content }}{% endif %}"
                    "<|EOT|>{% endfor %}<|SOT|><|BOT|>",
                    ["<|SOT|>", "<|BOT|>", "<|RS|>", "<|RE|>", "<|EOT|>", "<|SYS|>", "<|USR|>"], ["<|EOT|>"]),
    # GLM-like: no token of its own ends an assistant turn; generation stops on the next <|u|> or <|obs|>.
    "no_end_token": ("[g]{% for m in messages %}{% if m.role == 'user' %}<|u|>\n{{ m.content }}"
                     "{% elif m.role == 'tool' %}<|obs|>\n{{ m.content }}{% elif m.role == 'system' %}<|sys|>\n"
                     "{{ m.content }}{% else %}<|a|>\n{{ m.content.strip() }}" + CALLS + "{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}<|a|>\n{% endif %}",
                     ["[g]", "<|u|>", "<|a|>", "<|obs|>", "<|sys|>"], ["<|u|>", "<|obs|>"]),
    # gpt-oss-like: channel markers inside what the model generates, reasoning only in the last turn, and a
    # different end token (<|ret|>) for the last turn than for history (<|end|>).
    "channels": ("{% for m in messages %}{% if m.role == 'assistant' %}"
                 "{% if loop.last and not add_generation_prompt %}"
                 "{% if m.thinking %}<|start|>assistant<|ch|>analysis<|msg|>{{ m.thinking }}<|end|>{% endif %}"
                 "<|start|>assistant<|ch|>final<|msg|>{{ m.content }}<|ret|>"
                 "{% else %}<|start|>assistant<|ch|>final<|msg|>{{ m.content }}<|end|>{% endif %}"
                 "{% else %}<|start|>{{ m.role }}<|msg|>{{ m.content }}<|end|>{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant{% endif %}",
                 ["<|start|>", "<|end|>", "<|msg|>", "<|ch|>", "<|ret|>"], ["<|ret|>"]),
    # DeepSeek-R1 / R1-Distill / llama.cpp's R1 template: the assistant header and a forced <think> in the
    # generation prompt; the reasoning split off every assistant turn, the last one included.
    "header_in_prompt": ("<s>{% for m in messages %}{% if m.role == 'user' %}<|User|>{{ m.content }}"
                         "{% elif m.role == 'assistant' %}{% set c = m.content %}{% if '</think>' in c %}"
                         "{% set c = c.split('</think>')[-1] %}{% endif %}<|Assistant|>{{ c }}"
                         "<|eos|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|><think>\n"
                         "{% endif %}", ["<|User|>", "<|Assistant|>", "<|eos|>"], ["<|eos|>"]),
    # DeepSeek-V3.1 in thinking mode (chat_template_kwargs: {thinking: true}): the reasoning split off every
    # assistant turn, each written after the header and </think> (no reasoning); the generation prompt opens it.
    "think_marker": ("<s>{% for m in messages %}{% if m.role == 'user' %}<|User|>{{ m.content }}"
                     "{% elif m.role == 'assistant' %}{% set c = m.content %}{% if '</think>' in c %}"
                     "{% set c = c.split('</think>', 1)[1] %}{% endif %}<|Assistant|></think>{{ c }}"
                     "<|eos|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|><think>"
                     "{% endif %}", ["<|User|>", "<|Assistant|>", "<|eos|>"], ["<|eos|>"]),
    # Apertus / nanochat: the turn's end token (the model's eos) is written only when the next turn starts, and
    # nothing after the last turn.
    "closed_by_next": ("<|bos|>{% for m in messages %}{% if m.role == 'assistant' %}<|assistant_start|>"
                       "{{ m.content }}{% else %}{% if not loop.first and messages[loop.index0 - 1].role == "
                       "'assistant' %}<|assistant_end|>{% endif %}<|{{ m.role }}_start|>{{ m.content }}"
                       "<|{{ m.role }}_end|>{% endif %}{% endfor %}{% if add_generation_prompt %}"
                       "<|assistant_start|>{% endif %}",
                       ["<|bos|>", "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
                        "<|assistant_start|>", "<|assistant_end|>"], ["<|assistant_end|>"]),
}
# DeepSeek-V3.1-like: tool-call arguments joined as text with `+` (a mapping cannot be), calls after the content.
STRUCTURES["text_arguments"] = (
    "{% for m in messages %}{% if m.role == 'user' %}<|User|>{{ m.content }}{% elif m.role == 'tool' %}"
    "<|out|>{{ m.content }}<|/out|>{% elif m.role == 'assistant' %}<|Assistant|>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}{{ '<|call|>' + c.function.name + '<|sep|>' + c.function.arguments + "
    "'<|/call|>' }}{% endfor %}<|eos|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|>{% endif %}",
    ["<|User|>", "<|Assistant|>", "<|call|>", "<|sep|>", "<|/call|>", "<|out|>", "<|/out|>", "<|eos|>"],
    ["<|eos|>"])
REASONING_FIELD = {"drops_reasoning": "reasoning_content", "reasoning_field": "reasoning_content",
                   "channels": "thinking", "header_in_prompt": "reasoning_content",
                   "think_marker": "reasoning_content"}
RENDERS_TOOLS = {"drops_reasoning", "reasoning_field", "no_end_token", "text_arguments"}
NO_SYSTEM = {"channels", "header_in_prompt", "text_arguments", "think_marker"}


def trl_templates() -> dict[str, str]:
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    return {f"trl/{p.stem}": p.read_text() for p in sorted(folder.glob("*.jinja"))}


@lru_cache(maxsize=None)
def tokenizer_for(name: str):
    """(tokenizer, generation stop tokens) with the template's special tokens added, as for a real model."""
    stops, specials = [], None
    if name in STRUCTURES:
        template, specials, stops = STRUCTURES[name]
    elif name in BUILTIN_TEMPLATES:
        template, specials = builtin_template(name), BUILTIN_TEMPLATES[name]
    else:
        template = trl_templates()[name]
    return template_tokenizer(template, specials), tuple(stops)


def rows_for(name, messages, tools=None, fallback="context", kwargs=None):
    tokenizer, stops = tokenizer_for(name)
    plan = plan_masks(tokenizer, "assistant", stop_tokens=stops, template_kwargs=kwargs)
    example = {"messages": messages, **({"tools": tools} if tools else {})}
    table = encode_batch({"example": [json.dumps(example)]}, [0], tokenizer, plan, "assistant", None, "keep_start",
                         fallback, "data")
    return tokenizer, stops, table.to_pylist()


def trained(tokenizer, rows) -> list[str]:
    from tests.support.mask_definition import runs_of

    return [tokenizer.decode(r["input_ids"][a:b]) for r in rows for a, b in runs_of(r["labels"])]


# ---------------------------------------------------------------------------------------------------------------
# Each structure, exactly

def reasoning_turn(content, reasoning, form):
    if form == "inline":
        return {"role": "assistant", "content": f"<think>{reasoning}</think>{content}"}
    return {"role": "assistant", "content": content, form: reasoning}


def test_a_trimming_template_trains_what_it_renders_and_never_stops():
    messages = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "  padded answer \n"}]
    tokenizer, _, rows = rows_for("trims", messages)
    assert rows[0]["error"] is None and trained(tokenizer, rows) == ["padded answer<|eot|>"]


def parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def test_text_parts_reach_a_text_only_template_as_text_not_as_a_lists_repr():
    """OpenAI-style content parts are common in chat data. Llama 3.2 and Gemma 2 write `{{ content | trim }}`, which
    for a list is its Python repr: "[{'type': 'text', ...}]" was rendered and trained. The parts are joined first."""
    as_text = [{"role": "user", "content": " Grüß dich "}, {"role": "assistant", "content": "Hallo ✓\n"}]
    as_parts = [{"role": "user", "content": parts(" Grüß") + parts(" dich ")},
                {"role": "assistant", "content": parts("Hallo ") + parts("✓\n")}]
    tokenizer, _, text_rows = rows_for("trims", as_text)
    _, _, parts_rows = rows_for("trims", as_parts)
    assert [masked(tokenizer, r) for r in parts_rows] == [masked(tokenizer, r) for r in text_rows] == [
        "<|hdr|>user<|/hdr|>Grüß dich<|eot|><|hdr|>assistant<|/hdr|>⟦Hallo ✓<|eot|>⟧"]
    # R1-like: reasoning inside a text part is kept as it is for a string
    r1_parts = parts("<think>\nr1\n</think>\n\none")
    tokenizer, _, rows = rows_for("header_in_prompt", [{"role": "user", "content": parts("a")},
                                                       {"role": "assistant", "content": r1_parts}])
    assert [masked(tokenizer, r) for r in rows] == ["<s><|User|>a<|Assistant|><think>\n⟦r1\n</think>\n\none<|eos|>⟧"]


def test_a_template_that_writes_text_only_from_parts_is_given_the_parts():
    """Some vision models' templates loop over content parts and write nothing for a string."""
    STRUCTURES["parts_only"] = ("{% for m in messages %}<|s|>{{ m.role }}\n{% for p in m.content %}"
                                "{% if p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}<|e|>{% endfor %}"
                                "{% if add_generation_prompt %}<|s|>assistant\n{% endif %}", ["<|s|>", "<|e|>"],
                                ["<|e|>"])
    try:
        messages = [{"role": "user", "content": parts("a")}, {"role": "assistant", "content": parts("b") + parts("c")}]
        tokenizer, _, rows = rows_for("parts_only", messages)
        assert [masked(tokenizer, r) for r in rows] == ["<|s|>user\na<|e|><|s|>assistant\n⟦bc<|e|>⟧"]
    finally:
        del STRUCTURES["parts_only"]


@pytest.mark.parametrize("form", ["reasoning_content", "inline"])
def test_reasoning_dropped_from_history_is_trained_turn_by_turn_in_the_context_the_model_sees(form):
    messages = [{"role": "user", "content": "a"}, reasoning_turn("one", "r1", form),
                {"role": "user", "content": "b"}, reasoning_turn(" two", "r2", form)]
    tokenizer, _, rows = rows_for("drops_reasoning", messages)
    assert [r["part"] for r in rows] == [1, 2]
    assert trained(tokenizer, rows) == ["<think>r1</think>one<|im_end|>", "<think>r2</think>two<|im_end|>"]
    assert "r1" not in tokenizer.decode(rows[1]["input_ids"])  # turn 2's context: history as the model sees it
    assert [p[2] for p in rows[0]["parts"]] == [1]  # the reasoning span, for `sft preview`


def test_a_reasoning_field_rendered_in_every_turn_is_trained_in_one_example():
    messages = [{"role": "user", "content": "a"}, reasoning_turn("one", "r1", "reasoning_content"),
                {"role": "user", "content": "b"}, reasoning_turn("two", "r2", "reasoning_content")]
    tokenizer, _, rows = rows_for("reasoning_field", messages)
    assert len(rows) == 1 and rows[0]["part"] == 0
    assert trained(tokenizer, rows) == ["<|think|>r1<|/think|>one<|e|>", "<|think|>r2<|/think|>two<|e|>"]


def test_the_next_header_written_after_the_last_turn_is_not_trained():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"}]
    tokenizer, _, rows = rows_for("next_header", messages)
    assert trained(tokenizer, rows) == ["<|RS|>one<|RE|><|EOT|>", "<|RS|>two<|RE|><|EOT|>"]
    assert tokenizer.decode(rows[0]["input_ids"]).endswith("two<|RE|><|EOT|><|SOT|><|BOT|>")


def test_a_turn_without_its_own_end_token_ends_with_the_stop_token_that_follows_it():
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    tokenizer, _, rows = rows_for("no_end_token", messages)
    assert trained(tokenizer, rows) == ['<call>weather {"city": "Paris"}</call><|obs|>', "It is sunny.<|u|>"]
    assert tokenizer.decode(rows[0]["input_ids"]).endswith("It is sunny.<|u|>")  # appended after the last turn
    assert [p[2] for p in rows[0]["parts"]] == [2]  # the tool-call span, for `sft preview`


def encoded(tokenizer, messages) -> list[dict]:
    """The rows of one conversation, with only the tokenizer's eos as a stop token."""
    plan = plan_masks(tokenizer, "assistant")
    table = encode_batch({"example": [json.dumps({"messages": messages})]}, [0], tokenizer, plan, "assistant", None,
                         "keep_start", "context", "data")
    return table.to_pylist()


@pytest.mark.parametrize("name,token", [("no_end_token", "<|u|>"), ("closed_by_next", "<|assistant_end|>")])
def test_without_the_stop_token_in_the_generation_config_the_row_says_which_token_to_set(name, token):
    template, specials, _ = STRUCTURES[name]
    rows = encoded(template_tokenizer(template, specials),
                   [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert rows[0]["error"] == (
        f"no token ends assistant message 2: the template ends it only with the next turn's {token}, which is not a "
        "generation stop token of the model; add its id to eos_token_id in the model's generation_config.json")


def test_channel_markers_the_model_writes_are_trained_and_history_is_split():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one", "thinking": "r1"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "two", "thinking": "r2"}]
    tokenizer, _, rows = rows_for("channels", messages)
    assert trained(tokenizer, rows) == [
        "<|ch|>analysis<|msg|>r1<|end|><|start|>assistant<|ch|>final<|msg|>one<|ret|>",
        "<|ch|>analysis<|msg|>r2<|end|><|start|>assistant<|ch|>final<|msg|>two<|ret|>"]


def test_tool_call_arguments_a_template_joins_as_text_are_given_as_json_text():
    call = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Zürich", "unit": "C"}}}
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    tokenizer, _, rows = rows_for("text_arguments", messages)
    assert rows[0]["error"] is None
    assert trained(tokenizer, rows) == ['<|call|>weather<|sep|>{"city": "Zürich", "unit": "C"}<|/call|><|eos|>',
                                        "It is sunny.<|eos|>"]


def test_the_header_in_the_generation_prompt_is_not_trained():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"}]
    tokenizer, _, rows = rows_for("header_in_prompt", messages)
    assert trained(tokenizer, rows) == ["one<|eos|>"]
    assert tokenizer.decode(rows[0]["input_ids"]) == "<s><|User|>a<|Assistant|>one<|eos|>"


def masked(tokenizer, row) -> str:
    """The row's text, each run of trained tokens (labels equal to input_ids) decoded in ⟦ ⟧."""
    ids, labels, out, start = row["input_ids"], row["labels"], "", 0
    for a, b in runs_of(labels):
        assert labels[a:b] == ids[a:b]
        out += tokenizer.decode(ids[start:a]) + "⟦" + tokenizer.decode(ids[a:b]) + "⟧"
        start = b
    return out + tokenizer.decode(ids[start:])


def r1_turn(reasoning, answer):
    return {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"}  # as R1 writes it


def test_reasoning_a_template_drops_from_every_turn_is_trained_as_generated_one_example_per_turn():
    """DeepSeek-R1-like: each turn is trained after the generation prompt (which ends in <think>\\n) as the model
    generates it: its reasoning, </think>, the answer and eos; each in the context the model sees (history without
    reasoning), so a conversation becomes one example per turn."""
    messages = [{"role": "user", "content": "Wie viel ist 2+2?"}, r1_turn("2 plus 2 ist 4.", "**4** ✓"),
                {"role": "user", "content": "und 3+3 ?"}, r1_turn("3+3 = 6", "6")]
    tokenizer, _, rows = rows_for("header_in_prompt", messages)
    assert [(r["error"], r["part"]) for r in rows] == [(None, 1), (None, 2)]
    assert [masked(tokenizer, r) for r in rows] == [
        "<s><|User|>Wie viel ist 2+2?<|Assistant|><think>\n⟦2 plus 2 ist 4.\n</think>\n\n**4** ✓<|eos|>⟧",
        "<s><|User|>Wie viel ist 2+2?<|Assistant|>\n\n**4** ✓<|eos|><|User|>und 3+3 ?<|Assistant|><think>\n"
        "⟦3+3 = 6\n</think>\n\n6<|eos|>⟧"]
    assert [[p[2] for p in r["parts"]] for r in rows] == [[1], [1]]  # the reasoning span, for `sft preview`


@pytest.mark.parametrize("content,generated", [
    ("<think>\nr1\n</think>\n\none", "r1\n</think>\n\none"),  # as R1 writes it
    ("r1\n</think>\n\none", "r1\n</think>\n\none"),  # without the opening the generation prompt writes
    (" <think>r1</think>one", "r1</think>one"),  # the opening written differently: the prompt's is the one seen
    ("<think>\n\n</think>\n\none", "\n</think>\n\none"),  # no reasoning: the empty think block is generated
    ({"content": "one", "reasoning_content": " r1\n"}, "r1\n</think>\n\none"),  # a field: in R1's own form
    ({"content": "\none", "thinking": "r1"}, "r1\n</think>\n\none")])
def test_a_single_turn_of_a_template_that_drops_reasoning_keeps_it(content, generated):
    answer = content if isinstance(content, dict) else {"content": content}
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", **answer}]
    tokenizer, _, rows = rows_for("header_in_prompt", messages)
    assert [masked(tokenizer, r) for r in rows] == [f"<s><|User|>a<|Assistant|><think>\n⟦{generated}<|eos|>⟧"]
    assert rows[0]["part"] == 0


@pytest.mark.parametrize("form", ["reasoning_content", "inline"])
def test_reasoning_is_kept_where_the_template_writes_no_reasoning_marker_and_the_prompt_opens_it(form):
    """DeepSeek-V3.1-like in thinking mode: every assistant turn is written `<|Assistant|></think>answer`, the
    generation prompt is `<|Assistant|><think>`. The model generates the reasoning, </think> and the answer after
    that prompt: each turn is trained so, in the context it is generated in (earlier turns without reasoning).
    Before, `</think>answer` was trained after `<|Assistant|>` and the reasoning was silently dropped."""
    messages = [{"role": "user", "content": "Wie viel ist 2+2?"}, reasoning_turn("**4** ✓", "2 plus 2 ist 4.", form),
                {"role": "user", "content": "und 3+3 ?"}, reasoning_turn("6", "3+3 = 6", form)]
    tokenizer, _, rows = rows_for("think_marker", messages)
    assert [(r["error"], r["part"]) for r in rows] == [(None, 1), (None, 2)]
    assert [masked(tokenizer, r) for r in rows] == [
        "<s><|User|>Wie viel ist 2+2?<|Assistant|><think>⟦2 plus 2 ist 4.</think>**4** ✓<|eos|>⟧",
        "<s><|User|>Wie viel ist 2+2?<|Assistant|></think>**4** ✓<|eos|><|User|>und 3+3 ?<|Assistant|><think>"
        "⟦3+3 = 6</think>6<|eos|>⟧"]
    assert [[p[2] for p in r["parts"]] for r in rows] == [[1], [1]]  # the reasoning span, for `sft preview`
    # an empty think block written in the data is generated as it is written: </think> right after <think>
    _, _, rows = rows_for("think_marker", [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "<think>\n</think>b"}])
    assert [masked(tokenizer, r) for r in rows] == ["<s><|User|>a<|Assistant|><think>⟦\n</think>b<|eos|>⟧"]


def test_mask_fallback_applies_to_a_template_that_drops_reasoning_from_every_turn():
    two = [{"role": "user", "content": "a"}, r1_turn("r1", "one"), {"role": "user", "content": "b"},
           r1_turn("r2", "two")]
    tokenizer, _, rows = rows_for("header_in_prompt", two, fallback="last_assistant")
    assert trained(tokenizer, rows) == ["r2\n</think>\n\ntwo<|eos|>"] and rows[0]["fallback"]
    _, _, rows = rows_for("header_in_prompt", two, fallback="error")
    assert rows[0]["error"].startswith("the chat template renders earlier assistant turns differently")


def test_an_end_token_written_only_when_the_next_turn_starts_is_each_turns_stop_token():
    """Apertus/nanochat-like, <|assistant_end|> the tokenizer's eos: written before the next user turn, nothing
    after the last turn. Each turn is trained through it; the last turn gets it appended."""
    template, specials, _ = STRUCTURES["closed_by_next"]
    tokenizer = template_tokenizer(template, specials)
    tokenizer.eos_token = "<|assistant_end|>"
    rows = encoded(tokenizer, [{"role": "system", "content": "Sei kurz."}, {"role": "user", "content": "hi "},
                               {"role": "assistant", "content": " hello\n"}, {"role": "user", "content": "und?"},
                               {"role": "assistant", "content": "gut ✓"}])
    assert [(r["error"], r["part"]) for r in rows] == [(None, 0)]
    assert masked(tokenizer, rows[0]) == (
        "<|bos|><|system_start|>Sei kurz.<|system_end|><|user_start|>hi <|user_end|><|assistant_start|>"
        "⟦ hello\n<|assistant_end|>⟧<|user_start|>und?<|user_end|><|assistant_start|>⟦gut ✓<|assistant_end|>⟧")


def test_chat_template_kwargs_reach_the_template():
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% if not thinking %}<think></think>"
                "{% endif %}{% endif %}")
    STRUCTURES["kwargs"] = (template, [], ["<|im_end|>"])
    try:
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think></think>one"}]
        tokenizer, _, rows = rows_for("kwargs", messages, kwargs={"thinking": False})
        assert trained(tokenizer, rows) == ["one<|im_end|>"]  # the empty think block is in the prompt
        tokenizer, _, rows = rows_for("kwargs", messages, kwargs={"thinking": True})
        assert trained(tokenizer, rows) == ["<think></think>one<|im_end|>"]
    finally:
        del STRUCTURES["kwargs"]


# ---------------------------------------------------------------------------------------------------------------
# Property: random conversations x every template

text = st.text(alphabet=" abcxyzé✓你\n.,!?:-'\"#", min_size=1, max_size=16)
answer = text.filter(lambda s: s.strip() and "<" not in s)


@st.composite
def conversations(draw, name):
    messages = [{"role": "system", "content": draw(text)}] if name not in NO_SYSTEM and draw(st.booleans()) else []
    form = draw(st.sampled_from([None, "inline", REASONING_FIELD.get(name, "inline")]))
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(text)})
        if name in RENDERS_TOOLS and draw(st.booleans()):
            call = {"type": "function", "function": {"name": "f", "arguments": {"x": draw(answer)}}}
            messages += [{"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "content": draw(text)}]
        content = draw(answer)
        messages.append(reasoning_turn(content, draw(answer), form) if form else
                        {"role": "assistant", "content": content})
    return messages


def check_conversation(name, messages):
    tokenizer, stops, rows = rows_for(name, messages)
    try:
        try:
            reference = definition(tokenizer, messages, stops=stops)
        except TypeError:  # a template that joins tool-call arguments as text is given them as JSON text
            reference = definition(tokenizer, with_text_arguments(messages), stops=stops)
    except Exception:  # the template refuses the conversation: so does sft, with the reason
        assert rows[0]["error"], name
        return
    if isinstance(reference, str):
        assert rows[0]["error"], (name, reference)
        return
    assert all(r["error"] is None for r in rows), (name, rows[0]["error"])
    assert mismatch(tokenizer, rows, reference) is None, (name, mismatch(tokenizer, rows, reference))


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES) + sorted(STRUCTURES))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_trained_spans_equal_the_definition(name, data):
    check_conversation(name, data.draw(conversations(name)))


@pytest.mark.parametrize("name", sorted(trl_templates()))  # 72 templates, ~16 s in all: in the default run
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_trained_spans_equal_the_definition_for_every_template_trl_ships(name, data):
    check_conversation(name, data.draw(conversations(name)))


# ---------------------------------------------------------------------------------------------------------------
# Through the CLI


def model_with(tmp_path, tiny_bpe_model, name):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / name
    shutil.copytree(tiny_bpe_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template, specials, _ = STRUCTURES[name]
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return folder


def test_preview_marks_reasoning_and_says_when_a_conversation_was_split(tmp_path, tiny_bpe_model):
    from tests.conftest import run_cli, write_recipe

    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one", "reasoning_content": "r1"},
                {"role": "user", "content": "b"}, {"role": "assistant", "content": "two", "reasoning_content": "r2"}]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(model_with(tmp_path, tiny_bpe_model,
                                                                                   "drops_reasoning")),
                          dataset_name=str(data), output_dir=str(tmp_path / "out"))
    out = run_cli("preview", recipe, check=True).stdout
    assert out.count("of a split conversation (the template renders earlier turns differently)") == 2
    assert "⟦reasoning: r1⟧" in out and "⟦reasoning: r2⟧" in out and "⟦</think>one<|im_end|>⟧" in out
    check = run_cli("check", recipe)
    assert "1 conversation(s) split into one example per assistant turn" in check.stdout + check.stderr


def test_a_template_that_drops_reasoning_from_every_turn_through_the_cli(tmp_path, tiny_bpe_model):
    """R1-like: `sft check` counts the examples a split conversation became (packing packs them as any examples)
    and says why; `sft preview` shows each turn trained with its reasoning."""
    from transformers import AutoTokenizer

    from tests.conftest import run_cli, write_recipe

    rows = [{"messages": [{"role": "user", "content": "a"}, r1_turn("r1", "one"), {"role": "user", "content": "b"},
                          r1_turn("r2", "two")]},
            {"messages": [{"role": "user", "content": "c"}, r1_turn("r3", "three")]}]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    folder = model_with(tmp_path, tiny_bpe_model, "header_in_prompt")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(folder), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"), packing=True)
    out = run_cli("check", recipe, check=True).stdout
    assert f"source 1: {data}: chat, 2 rows, 3 training examples, 0 bad rows" in out
    assert "training data: 1 conversation(s) split into one example per assistant turn" in out
    tokenizer = AutoTokenizer.from_pretrained(folder)
    shown = [json.loads(line) for line in run_cli("preview", recipe, "--json", check=True).stdout.splitlines()
             if line.startswith("{")]
    assert [[tokenizer.decode(r["input_ids"][a:b]) for a, b in runs_of(r["labels"])] for r in shown] == [
        ["r1\n</think>\n\none<|eos|>"], ["r2\n</think>\n\ntwo<|eos|>"], ["r3\n</think>\n\nthree<|eos|>"]]


def test_vision_rows_are_refused_in_one_line(tmp_path, tiny_bpe_model):
    from tests.conftest import run_cli, write_recipe

    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                     {"type": "text", "text": "What is it?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]}
    data = tmp_path / "vision.jsonl"
    data.write_text(json.dumps(row) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bpe_model), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"))
    proc = run_cli("preview", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {data}:1: message 1 has image content; vision (and audio) data is not supported (text parts "
        "only); none of the 1 rows can be used: fix the data")


def test_generation_config_stop_tokens_end_turns_that_have_no_token_of_their_own(tmp_path, tiny_bpe_model):
    """GLM-like: the model's generation_config.json lists <|u|> and <|obs|>; without them every row is refused,
    naming the token to add."""
    from transformers import AutoTokenizer, GenerationConfig

    from tests.conftest import run_cli, write_recipe

    folder = model_with(tmp_path, tiny_bpe_model, "no_end_token")
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "one"},
                                             {"role": "user", "content": "b"},
                                             {"role": "assistant", "content": "two"}]}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(folder), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"))
    refused = run_cli("preview", recipe)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        f"error: {data}:1: no token ends assistant message 4: the template ends it only with the next turn's <|u|>, "
        "which is not a generation stop token of the model; add its id to eos_token_id in the model's "
        "generation_config.json; fix the data or set skip_bad_rows: true to skip and count such rows")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    stops = tokenizer.convert_tokens_to_ids(["</s>", "<|u|>", "<|obs|>"])
    GenerationConfig(eos_token_id=stops).save_pretrained(folder)
    row = json.loads(run_cli("preview", recipe, "--json", check=True).stdout.splitlines()[-1])
    pieces = [tokenizer.decode(row["input_ids"][a:b]) for a, b in runs_of(row["labels"])]
    assert pieces == ["one<|u|>", "two<|u|>"]  # the last turn's stop token appended


def test_chat_template_kwargs_from_the_recipe_and_per_row(tmp_path, tiny_bpe_model):
    from transformers import AutoTokenizer

    from tests.conftest import run_cli, write_recipe

    STRUCTURES["kwargs"] = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                            "{% if add_generation_prompt %}<|im_start|>assistant\n{% if not thinking %}"
                            "<think></think>{% endif %}{% endif %}", [], [])
    try:
        folder = model_with(tmp_path, tiny_bpe_model, "kwargs")
    finally:
        del STRUCTURES["kwargs"]
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think></think>one"}]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n" +
                    json.dumps({"messages": messages, "chat_template_kwargs": {"thinking": False}}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(folder), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"), chat_template_kwargs={"thinking": True})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in run_cli("preview", recipe, "--json", check=True).stdout.splitlines()
            if line.startswith("{")]
    pieces = [[tokenizer.decode(r["input_ids"][a:b]) for a, b in runs_of(r["labels"])] for r in rows]
    assert pieces == [["<think></think>one<|im_end|>"], ["one<|im_end|>"]]


def test_invalid_jinja_is_named_with_jinjas_message_and_line(tmp_path, tiny_bpe_model):
    from tests.conftest import run_cli, write_recipe

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bpe_model), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"),
                          chat_template="{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    proc = run_cli("preview", recipe)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {recipe}: the chat template is not valid Jinja: line 2 of the template: unexpected '}}'"]


def test_text_the_generation_prompt_adds_before_its_header_is_not_trained_and_the_header_is_not_either():
    """The generation prompt writes a reminder before the assistant header that the rendered answer lacks: the
    answer starts after the header both hold."""
    template = ("{% for m in messages %}<|h|>{{ m.role }}\n{{ m.content }}<|e|>{% endfor %}"
                "{% if add_generation_prompt %}<|r|>be brief<|h|>assistant\n{% endif %}")
    STRUCTURES["reminder"] = (template, ["<|h|>", "<|e|>", "<|r|>"], ["<|e|>"])
    try:
        messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"}]
        tokenizer, _, rows = rows_for("reminder", messages)
        assert trained(tokenizer, rows) == ["one<|e|>"]
    finally:
        del STRUCTURES["reminder"]
