"""Masks: exactly the assistant contents and their end tokens are trained, for any template and tokenizer; equal to
TRL's where TRL can mask; failures named; truncation counted; packing keeps each sequence's labels; the cache."""

import json
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft.templates.chat import BUILTIN_TEMPLATES, set_template
from sft.errors import UserError
from sft.masks.plan import IGNORE, plan_masks
from sft.masks.tokenize import encode_batch, tokenize_all, tokenize_dataset
from tests.support.mask_definition import definition, mismatch, template_tokenizer

END_TOKENS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "zephyr": "</s>",
              "gemma": "<end_of_turn>", "alpaca": "</s>"}


@lru_cache(maxsize=None)
def tokenizer_for(template: str | None, kind: str = "char"):
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer(kind)
    if template:
        set_template(tokenizer, template)
    return tokenizer


def dataset(examples):
    from datasets import Dataset

    return Dataset.from_dict({"example": [json.dumps(e) for e in examples]})


def label_rows(tokenizer, examples, loss_mode="assistant", max_length=None, fallback="context"):
    """The real batch function on a batch of examples, without a datasets round trip."""
    plan = plan_masks(tokenizer, loss_mode)
    table = encode_batch({"example": [json.dumps(e) for e in examples]}, list(range(len(examples))), tokenizer,
                         plan, loss_mode, max_length, "keep_start", fallback, "data")
    return table.to_pylist()


def trained_runs(row) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def decoded_runs(tokenizer, row) -> list[str]:
    return [tokenizer.decode(run) for run in trained_runs(row)]


# ---------------------------------------------------------------------------------------------------------------
# Property: whatever the conversation, template and tokenizer

text = st.text(alphabet=" abcxyzABC019\n.,!?:-'\"#", min_size=1, max_size=24)
answer = text.filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(answer)}]
    return messages


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations())
def test_trained_tokens_are_exactly_the_answers_and_their_end_tokens(name, kind, messages):
    tokenizer = tokenizer_for(name, kind)
    row = label_rows(tokenizer, [{"messages": messages}])[0]
    assert row["error"] is None, row["error"]
    targets = [m["content"] + END_TOKENS[name] for m in messages if m["role"] == "assistant"]
    runs = trained_runs(row)
    assert len(runs) == len(targets)
    for run, target in zip(runs, targets):
        if kind == "char":  # one token per character: the trained text is the target, to the character
            assert tokenizer.decode(run) == target
        else:  # BPE merges across the boundary: only the first token may reach into the header before the answer
            assert tokenizer.decode(run).endswith(target)
            rest = tokenizer.decode(run[1:])
            assert target.endswith(rest) and len(rest) < len(target)


# ---------------------------------------------------------------------------------------------------------------
# Agreement with TRL's assistant_only_loss masks


AGREEMENT_CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye now"},
     {"role": "assistant", "content": " See you.\n"}],
]


def as_parts(messages):
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def trl_template_pairs() -> dict[str, tuple[str, str]]:
    """TRL's own pairs: name -> (a template TRL ships, the training version with {% generation %} markers that
    TRL's get_training_chat_template picks for it, as SFTTrainer(assistant_only_loss=True) does)."""
    from importlib import resources

    from trl.chat_template_utils import get_training_chat_template

    pairs = {}
    for path in resources.files("trl").joinpath("chat_templates").iterdir():
        if not path.name.endswith(".jinja") or path.name.endswith("_training.jinja"):
            continue
        original = path.read_text()
        try:
            training = get_training_chat_template(template_tokenizer(original))
        except ValueError:  # TRL has no training version of this one
            continue
        if training is not None:
            pairs[path.name.removesuffix(".jinja")] = (original, training)
    return pairs


def without_trailing_whitespace(tokenizer, ids, mask):
    """TRL's labels, less the whitespace its generation blocks take in after the end-of-turn token (the newline
    after <|im_end|>), which the model never generates: sft does not train it."""
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    for k in range(len(labels) - 1, -1, -1):
        ends_run = labels[k] != IGNORE and (k + 1 == len(labels) or labels[k + 1] == IGNORE)
        if ends_run and k > 0 and labels[k - 1] != IGNORE and not tokenizer.decode([ids[k]]).strip():
            labels[k] = IGNORE
    return labels


# TRL's training templates whose masks train exactly the definition on both conversations below. The others train
# part of the generation prompt (the header's newline in qwen2_5; <｜Assistant｜> in deepseek_r1_distill and
# deepseekv3; <|start|>assistant in gptoss and muse_glimmer; the forced <think> opening in the nemotron_3 and
# qwen3_5/3_6/3_8 ones) or render history otherwise (phi3's eos, qwen3's and gptoss's later turns); README, "Masks".
TRL_AGREES = {"cohere", "cohere2", "diffusion_gemma", "gemma", "gemma3", "idefics3", "lfm2", "lfm2_v2", "llama3",
              "llava_next", "qwen2_5_vl", "qwen3_instruct_2507", "qwen3_vl", "smolvlm"}


def test_masks_equal_trls_wherever_trls_training_template_agrees_with_the_definition():
    """For each template TRL ships a training version of: where TRL's assistant masks (the training template rendered
    with return_assistant_tokens_mask, as SFTTrainer(assistant_only_loss=True) does) train exactly the definition,
    sft's input_ids and labels equal TRL's token for token; everywhere sft trains the definition."""
    pairs = trl_template_pairs()
    assert len(pairs) >= 30
    agreed, disagreed = set(), set()  # names, per conversation
    for name, (original, training) in sorted(pairs.items()):
        tokenizer = template_tokenizer(original)
        for messages in AGREEMENT_CONVERSATIONS:
            for variant in (messages, as_parts(messages)):
                try:
                    reference = definition(tokenizer, variant)
                    expected = tokenizer.apply_chat_template(variant, chat_template=training, tokenize=True,
                                                             return_dict=True, return_assistant_tokens_mask=True)
                except Exception:
                    continue  # e.g. gemma renders no system turn, VLM templates want content parts
                rows = label_rows(tokenizer, [{"messages": variant}])
                if isinstance(reference, str):  # no token ends a turn: refused, named
                    assert rows[0]["error"], name
                    continue
                assert all(r["error"] is None for r in rows), (name, rows[0]["error"])
                assert mismatch(tokenizer, rows, reference) is None, (name, mismatch(tokenizer, rows, reference))
                trl = {"input_ids": expected["input_ids"],
                       "labels": without_trailing_whitespace(tokenizer, expected["input_ids"],
                                                             expected["assistant_masks"])}
                if mismatch(tokenizer, [trl], reference) is None:
                    assert len(rows) == 1 and rows[0]["input_ids"] == trl["input_ids"], name
                    assert rows[0]["labels"] == trl["labels"], name
                    agreed.add(name)
                else:
                    disagreed.add(name)
                break
    assert TRL_AGREES <= agreed - disagreed


def test_templates_trl_cannot_mask_still_train_the_end_token():
    """zephyr and mistral have no training version in TRL (assistant_only_loss raises); sft masks them."""
    for name in ("zephyr", "mistral"):
        tokenizer = tokenizer_for(name, "bpe")
        row = label_rows(tokenizer, [{"messages": AGREEMENT_CONVERSATIONS[0]}])[0]
        assert decoded_runs(tokenizer, row) == ["Hello!</s>"]


# ---------------------------------------------------------------------------------------------------------------
# Loss modes

MULTI = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
         {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"}]


def test_loss_modes():
    tokenizer = tokenizer_for("chatml")
    assert decoded_runs(tokenizer, label_rows(tokenizer, [{"messages": MULTI}], "assistant")[0]) == [
        "one<|im_end|>", "two<|im_end|>"]
    for mode in ("last_assistant", "completion"):
        assert decoded_runs(tokenizer, label_rows(tokenizer, [{"messages": MULTI}], mode)[0]) == ["two<|im_end|>"]
    row = label_rows(tokenizer, [{"messages": MULTI}], "all")[0]
    assert row["labels"] == row["input_ids"]
    # Conversational prompt/completion: the completion's turns only; plain prompt/completion: completion + EOS.
    pc = {"messages": MULTI, "_completion_turns": 1}
    assert decoded_runs(tokenizer, label_rows(tokenizer, [pc], None)[0]) == ["two<|im_end|>"]
    row = label_rows(tokenizer, [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}], None)[0]
    assert decoded_runs(tokenizer, row) == [" 4</s>"]
    row = label_rows(tokenizer, [{"text": "plain text"}], None)[0]
    assert tokenizer.decode(row["labels"]) == "plain text</s>"


# ---------------------------------------------------------------------------------------------------------------
# Templates that render history differently, and mask_fallback

STRIPS_REASONING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\n' + m['content'].split('</think>')[-1] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REASONING = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>r1</think>one"},
             {"role": "user", "content": "b"}, {"role": "assistant", "content": "<think>r2</think>two"}]


def test_mask_fallbacks():
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char", chat_template=STRIPS_REASONING)
    rows = label_rows(tokenizer, [{"messages": REASONING}])  # default: each turn in the context the model sees
    assert [decoded_runs(tokenizer, r) for r in rows] == [["<think>r1</think>one<|im_end|>"],
                                                         ["<think>r2</think>two<|im_end|>"]]
    assert [r["part"] for r in rows] == [1, 2] and not any(r["fallback"] for r in rows)
    assert tokenizer.decode(rows[0]["input_ids"]) == "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n" \
                                                     "<think>r1</think>one<|im_end|>\n"
    assert tokenizer.decode(rows[1]["input_ids"]).startswith("<|im_start|>user\na<|im_end|>\n<|im_start|>"
                                                             "assistant\none<|im_end|>")  # r1 dropped, as served
    rows = label_rows(tokenizer, [{"messages": REASONING}], fallback="last_assistant")
    assert [decoded_runs(tokenizer, r) for r in rows] == [["<think>r2</think>two<|im_end|>"]]
    assert rows[0]["fallback"] is True
    rows = label_rows(tokenizer, [{"messages": REASONING}], fallback="error")
    assert rows[0]["error"] == ("the chat template renders earlier assistant turns differently from how the model "
                                "generated them (e.g. drops their reasoning); mask_fallback: context or "
                                "mask_fallback: last_assistant would train it")
    # Where history renders as generated, every choice but split_turns keeps one example per conversation.
    plain = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
             {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"}]
    for fallback in ("context", "last_assistant", "error"):
        rows = label_rows(tokenizer, [{"messages": plain}], fallback=fallback)
        assert [decoded_runs(tokenizer, r) for r in rows] == [["one<|im_end|>", "two<|im_end|>"]]
    rows = label_rows(tokenizer, [{"messages": plain}], fallback="split_turns")
    assert [decoded_runs(tokenizer, r) for r in rows] == [["one<|im_end|>"], ["two<|im_end|>"]]


def test_split_conversations_are_counted_in_one_note():
    from sft.masks.summary import summary_notes
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char", chat_template=STRIPS_REASONING)
    kept, stats = tokenize_dataset(dataset([{"messages": REASONING}, {"messages": REASONING},
                                            {"messages": MULTI}]), tokenizer, "assistant", keep_stats=True)
    assert len(kept) == 5 and stats["split"] == 2
    assert stats["reasoning_left_out"] == 0  # each turn is trained with its reasoning, in its own example
    assert summary_notes("training data", stats) == [
        "training data: 2 conversation(s) split into one example per assistant turn, because the chat template "
        "renders earlier turns differently from how the model generated them (e.g. drops their reasoning); each "
        "turn is trained in the context the model sees"]


def test_reasoning_the_template_does_not_write_is_counted_in_one_note():
    """Llama 3.2 and ChatML-like templates write only `content`: a reasoning_content field (or DeepSeek-V3.1's
    reasoning with thinking off) is silently not trained. The turns are trained as written, and counted."""
    from sft.masks.summary import summary_notes
    from sft.tiny import build_tokenizer

    tokenizer = build_tokenizer("char")  # ChatML, {{ message['content'] }}
    with_field = [{"role": "user", "content": "a"},
                  {"role": "assistant", "content": "one", "reasoning_content": "erst denken ✓"},
                  {"role": "user", "content": "b"}, {"role": "assistant", "content": "two", "thinking": "r2"}]
    inline = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>r1</think>one"}]
    kept, stats = tokenize_dataset(dataset([{"messages": with_field}, {"messages": inline}, {"messages": MULTI}]),
                                   tokenizer, "assistant", keep_stats=True)
    assert len(kept) == 3 and stats["reasoning_left_out"] == 2  # the inline reasoning is written, and trained
    assert summary_notes("training data", stats) == [
        "training data: 2 trained assistant turn(s) carry reasoning (reasoning_content, thinking or "
        "<think>...</think>) that the chat template does not write, so it is not trained; check "
        "chat_template_kwargs (e.g. thinking: true) or use a template that renders reasoning"]
    # only trained turns count: with last_assistant the first turn's reasoning is not the note's business
    _, stats = tokenize_dataset(dataset([{"messages": with_field}]), tokenizer, "last_assistant", keep_stats=True)
    assert stats["reasoning_left_out"] == 1


def test_bad_conversations_are_named():
    tokenizer = tokenizer_for("gemma")
    ends_on_user = MULTI + [{"role": "user", "content": "c"}]
    twice = [MULTI[0], MULTI[0], MULTI[1]]
    rows = label_rows(tokenizer, [{"messages": MULTI}, {"messages": ends_on_user}, {"messages": twice}])
    assert rows[0]["error"] is None
    assert rows[1]["error"] == "the conversation ends on a user turn, not an assistant turn"
    assert rows[2]["error"] == ("the chat template cannot render it: gemma: roles must alternate "
                                "user/assistant/user/...")
    with pytest.raises(UserError, match=r"^data: row 2: the conversation ends on a user turn, not an assistant "
                                        r"turn \(1 more bad rows, e\.g\. data: row 3: the chat template cannot"):
        tokenize_dataset(dataset([{"messages": m} for m in (MULTI, ends_on_user, twice)]), tokenizer)
    kept, stats = tokenize_dataset(dataset([{"messages": m} for m in (MULTI, ends_on_user, twice)]), tokenizer,
                                   skip_bad_rows=True)
    assert len(kept) == 1 and stats["skipped_bad"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Truncation


def test_truncation_drops_and_counts_examples_that_lose_every_trained_token():
    tokenizer = tokenizer_for("chatml")
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    long = {"messages": [{"role": "user", "content": "x" * 80}, {"role": "assistant", "content": "yo"}]}
    kept, stats = tokenize_dataset(dataset([short] * 3 + [long]), tokenizer, "assistant", max_length=40)
    assert len(kept) == 3 and stats["dropped_truncated"] == 1 and stats["kept"] == 3
    assert all(len(ids) <= 40 for ids in kept["input_ids"])
    with pytest.raises(UserError, match=r"data: 3 of 4 examples lose every trained token to max_length=40 \(more "
                                        r"than max_dropped_fraction=0.5\); raise max_length or use truncation_mode: "
                                        r"keep_end"):
        tokenize_dataset(dataset([short] + [long] * 3), tokenizer, "assistant", max_length=40)
    kept, stats = tokenize_dataset(dataset([short] + [long] * 3), tokenizer, "assistant", max_length=40,
                                   truncation_mode="keep_end")
    assert len(kept) == 4 and stats["truncated"] == 3 and stats["dropped_truncated"] == 0


def test_completion_loss_with_a_short_max_length_never_trains_on_nothing():
    """trl#6668: with completion-only loss and a short max_length every label was masked and the loss was 0.0."""
    tokenizer = tokenizer_for(None)
    rows = [{"prompt": "Summarise: " + "long text " * 20, "completion": " short."}] * 4
    with pytest.raises(UserError, match=r"4 of 4 examples lose every trained token to max_length=64"):
        tokenize_dataset(dataset(rows), tokenizer, None, max_length=64)
    with pytest.raises(UserError, match="no example is left to train on"):
        tokenize_dataset(dataset(rows), tokenizer, None, max_length=64, max_dropped_fraction=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Packing through TRL's own preparation and collator


def test_packing_keeps_each_sequences_labels(tiny_model, tmp_path):
    """BFD packing (padding-free) through SFTTrainer's real preparation and collator: every packed sequence carries
    exactly its own labels (trl#3728 lost assistant masks when packing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [{"messages": [{"role": "user", "content": f"question {i} " * (i % 4 + 1)},
                              {"role": "assistant", "content": f"answer {i}"}]} for i in range(12)]
    ours, _ = tokenize_dataset(dataset(examples), tokenizer, "assistant", max_length=96)
    args = SFTConfig(output_dir=str(tmp_path), packing=True, packing_strategy="bfd", max_length=96,
                     per_device_train_batch_size=2, report_to=[], use_cpu=True, bf16=False, shuffle_dataset=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), args=args, train_dataset=ours,
                         processing_class=tokenizer)
    packed = trainer.train_dataset
    originals = {tuple(r["input_ids"]): r["labels"] for r in ours}
    seen = 0
    for row in packed:
        start = 0
        for length in row["seq_lengths"]:
            ids = tuple(row["input_ids"][start:start + length])
            assert row["labels"][start:start + length] == originals[ids]
            start += length
            seen += 1
    assert seen == len(ours) and len(packed) < len(ours)
    batch = trainer.data_collator([packed[0], packed[1]])
    labels, positions = batch["labels"][0].tolist(), batch["position_ids"][0].tolist()
    expected = [label for row in (packed[0], packed[1]) for label in row["labels"]]
    for k, (got, want) in enumerate(zip(labels, expected)):
        assert got == (IGNORE if positions[k] == 0 else want)  # a sequence's first token never predicts across


# ---------------------------------------------------------------------------------------------------------------
# The cache


def test_cache_is_reused_only_when_data_tokenizer_template_and_settings_are_unchanged(tmp_path, monkeypatch):
    from sft.tiny import build_tokenizer

    monkeypatch.setenv("SFT_CACHE_DIR", str(tmp_path / "cache"))
    rows = dataset([{"messages": MULTI}, {"messages": MULTI[:2]}])
    tokenizer = build_tokenizer("char")
    first = tokenize_all(rows, tokenizer, "assistant", use_cache=True)
    again = tokenize_all(rows, build_tokenizer("char"), "assistant", use_cache=True)
    assert (first.cache, again.cache) == ("miss", "hit")
    assert again.full["labels"] == first.full["labels"]
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1

    other_template = build_tokenizer("char")
    set_template(other_template, "zephyr")
    more_tokens = build_tokenizer("char")
    more_tokens.add_tokens(["one"])
    changed = {
        "template": tokenize_all(rows, other_template, "assistant", use_cache=True),
        "tokenizer": tokenize_all(rows, more_tokens, "assistant", use_cache=True),
        "data": tokenize_all(dataset([{"messages": MULTI}]), tokenizer, "assistant", use_cache=True),
        "settings": tokenize_all(rows, tokenizer, "assistant", max_length=8, use_cache=True),
        "chat_template_kwargs": tokenize_all(rows, tokenizer, "assistant", use_cache=True, plan=plan_masks(
            tokenizer, "assistant", template_kwargs={"enable_thinking": False})),
        "row kwargs": tokenize_all(dataset([{"messages": MULTI, "chat_template_kwargs": {"enable_thinking": False}},
                                            {"messages": MULTI[:2]}]), tokenizer, "assistant", use_cache=True),
        "row tools": tokenize_all(dataset([{"messages": MULTI, "tools": [{"type": "function", "function": {
            "name": "f"}}]}, {"messages": MULTI[:2]}]), tokenizer, "assistant", use_cache=True),
        "stop tokens": tokenize_all(rows, tokenizer, "assistant", use_cache=True, plan=plan_masks(
            tokenizer, "assistant", stop_tokens=("<|im_end|>",))),
    }
    assert {name: t.cache for name, t in changed.items()} == dict.fromkeys(changed, "miss")
    assert changed["tokenizer"].full["input_ids"] != first.full["input_ids"]  # "one" is a single token now
    assert tokenize_all(rows, tokenizer, "assistant", use_cache=True).cache == "hit"
