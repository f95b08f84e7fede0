"""Rendered examples become `input_ids` and `labels` (-100 where not trained), in batches through `Dataset.map`.

A token is trained when its characters overlap a trained span (sft.masks.offsets), so tokens that merge across a
boundary are handled as in TRL's masks.
"""

import itertools
import json
from dataclasses import dataclass

import numpy as np

from sft.errors import UserError
from sft.io import frozen_heap
from sft.masks.byte_offsets import byte_lengths, forget_byte_lengths, labels_from_lengths
from sft.masks.offsets import encode_texts, labels_for, plain_backend, token_parts
from sft.masks.cache import cache_key, cache_root, scratch_file, scratch_name
from sft.masks.plan import IGNORE, MaskError, MaskPlan, plan_masks
from sft.masks.skeleton import skeletons_for
from sft.masks.spans import FALLBACKS, Rendered, chat_examples

COLUMNS = ("input_ids", "labels", "length", "trained", "truncated", "lost", "error", "where", "source", "fallback",
           "part", "parts", "bad", "reasoning_left_out")
NO_TOKENS = np.zeros(0, np.int32)  # the ids and labels of a row that failed


def default_mode(example: dict) -> str:
    if example.get("messages") is not None:
        return "completion" if example.get("_completion_turns") else "assistant"
    return "completion" if example.get("completion") is not None else "all"


def render_example(example: dict, plan: MaskPlan, loss_mode: str | None, fallback: str, eos: str,
                   fast: bool = True) -> list[Rendered]:
    """The examples one normalised row becomes (more than one where a conversation is split). `fast`: chat rows
    through the skeleton of their shape (sft.masks.skeleton), equal to the exact path."""
    mode = loss_mode or default_mode(example)
    if example.get("messages") is not None:
        if fast:
            return skeletons_for(plan).examples(example, mode, fallback)
        return chat_examples(plan, example, mode, fallback)
    if example.get("completion") is not None:
        prompt, completion = example["prompt"], example["completion"]
        text = prompt + completion + ("" if completion.endswith(eos) else eos)
        return [Rendered(text, [(0 if mode == "all" else len(prompt), len(text))], False)]
    if example.get("text") is not None:
        text = example["text"] + ("" if example["text"].endswith(eos) else eos)
        return [Rendered(text, [(0, len(text))], False)]
    raise MaskError("the example has no messages, prompt/completion or text")


@dataclass
class Item:
    row: int
    rendered: Rendered | None
    error: str | None = None  # it could not be rendered or masked
    bad: str | None = None  # the raw row could not be normalised (a RowReader's rows)


def tokens_of(tokenizer, items: list[Item]) -> list[tuple[np.ndarray, np.ndarray, list] | None]:
    """Each item's (input ids, labels, reasoning/tool-call token spans), ids and labels as int32 arrays; None where
    it failed to render.
    Chat texts of a byte-level BPE tokenizer are labelled from the tokens' byte lengths (sft.masks.byte_offsets),
    sampled rows checked against the offsets; every other text, and any row whose lengths do not add up, from the
    tokenizer's offsets."""
    out = [None] * len(items)
    lengths = byte_lengths(tokenizer) if plain_backend(tokenizer) else None
    for is_chat in (True, False):  # chat templates write their own special tokens; plain text gets BOS as in TRL
        chosen = [k for k, item in enumerate(items) if item.rendered is not None and item.rendered.is_chat == is_chat]
        fast = [k for k in chosen if is_chat and lengths is not None and not items[k].rendered.parts]
        if fast:
            texts = [items[k].rendered.text for k in fast]
            ids_rows = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
            labelled = labels_from_lengths(lengths, texts, ids_rows, [items[k].rendered.spans for k in fast])
            checked = sampled(labelled)
            if not agrees_with_offsets(tokenizer, texts, labelled, [items[k].rendered for k in fast], checked):
                forget_byte_lengths(tokenizer)  # this process labels with offsets from now on
                labelled = [None] * len(fast)
            for k, tokens in zip(fast, labelled):
                if tokens is not None:
                    out[k] = (*tokens, [])
        rest = [k for k in chosen if out[k] is None]
        if rest:
            encodings = encode_texts(tokenizer, [items[k].rendered.text for k in rest], not is_chat)
            for k, encoding in zip(rest, encodings):
                rendered = items[k].rendered
                ids, labels = labels_for(encoding, rendered.spans)
                out[k] = (np.array(ids, np.int32), np.array(labels, np.int32), token_parts(encoding, rendered.parts))
    return out


VERIFY_FIRST, SAMPLE = 16, 256  # rows of each process labelled both ways: the first few, then 1 in SAMPLE
_labelled_fast = itertools.count(1)  # this process's rows labelled from byte lengths


def sampled(labelled) -> list[int]:
    """The rows of a batch this process also labels from the offsets: its first few, then 1 in SAMPLE."""
    picked = []
    for row, tokens in enumerate(labelled):
        if tokens is not None:
            seen = next(_labelled_fast)
            if seen <= VERIFY_FIRST or seen % SAMPLE == 0:
                picked.append(row)
    return picked


def agrees_with_offsets(tokenizer, texts, labelled, rendered, rows: list[int]) -> bool:
    """Whether these rows' (ids, labels) equal those computed from the tokenizer's offsets."""
    if not rows:
        return True
    encodings = encode_texts(tokenizer, [texts[row] for row in rows], False)
    return all(labels_for(encoding, rendered[row].spans) == (labelled[row][0].tolist(), labelled[row][1].tolist())
               for row, encoding in zip(rows, encodings))


def encode_batch(batch, indices, tokenizer, plan, loss_mode, max_length, truncation_mode, fallback, source,
                 reader=None):
    """`Dataset.map(batched=True)` function. A failed example is kept with its error and filtered out later.
    The batch holds example JSON, or normalised rows (dicts), or with `reader` (sft.data.rows.RowReader) raw rows
    that it normalises here; a raw row that fails is kept with its reason in `bad`."""
    size = len(indices)
    reasons = [None] * size
    if reader is not None:
        examples, reasons = reader.read(batch, indices)
        wheres, sources = [reader.where(i) for i in indices], [reader.source_index] * size
    else:
        if "example" in batch:
            examples = [json.loads(s) for s in batch["example"]]
        else:  # rows of a dataset built from normalised dicts
            examples = [{key: batch[key][i] for key in batch} for i in range(size)]
        wheres = batch["where"] if "where" in batch else [f"{source}: row {i + 1}" for i in indices]
        sources = batch["source"] if "source" in batch else [0] * size
    eos = tokenizer.eos_token or ""
    items = []
    for row, (example, reason) in enumerate(zip(examples, reasons)):
        if reason is not None:
            items.append(Item(row, None, bad=reason))
            continue
        try:
            items += [Item(row, rendered) for rendered in render_example(example, plan, loss_mode, fallback, eos)]
        except MaskError as err:
            items.append(Item(row, None, str(err)))

    out = {name: [] for name in COLUMNS}
    for item, tokens in zip(items, tokens_of(tokenizer, items)):
        rendered = item.rendered
        ids, labels, parts = tokens or (NO_TOKENS, NO_TOKENS, [])
        full_trained = trained = int(np.count_nonzero(labels != IGNORE))
        cut = bool(max_length) and len(ids) > max_length
        if cut:
            keep = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
            shift = 0 if truncation_mode == "keep_start" else len(ids) - max_length
            ids, labels = ids[keep], labels[keep]
            parts = [[max(a - shift, 0), min(b - shift, len(ids)), kind] for a, b, kind in parts
                     if b - shift > 0 and a - shift < len(ids)]
            trained = int(np.count_nonzero(labels != IGNORE))
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["trained"].append(trained)
        out["truncated"].append(cut)
        out["lost"].append(full_trained > 0 and trained == 0)
        out["error"].append(item.error)
        out["where"].append(wheres[item.row])
        out["source"].append(sources[item.row])
        out["fallback"].append(bool(rendered and rendered.fell_back))
        out["part"].append(rendered.part if rendered else 0)
        out["parts"].append(parts)
        out["bad"].append(item.bad)
        out["reasoning_left_out"].append(rendered.reasoning_left_out if rendered else 0)
    return arrow_table(out)


def arrow_table(columns: dict):
    """The batch as an Arrow table of known types (much faster for datasets to write than inferred lists)."""
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    types = {"input_ids": ids, "labels": ids, "length": pa.int32(), "trained": pa.int32(), "truncated": pa.bool_(),
             "lost": pa.bool_(), "error": pa.string(), "where": pa.string(), "source": pa.int32(),
             "fallback": pa.bool_(), "part": pa.int32(), "parts": pa.list_(ids), "bad": pa.string(),
             "reasoning_left_out": pa.int32()}
    lists = {name: int32_lists(columns[name]) for name in ("input_ids", "labels")}
    return pa.table({name: lists[name] if name in lists else pa.array(columns[name], type=types[name])
                     for name in COLUMNS})


def int32_lists(rows: list):
    """Rows of ints (int32 arrays, or lists) as an Arrow list<int32> array, built from one flat numpy array and the
    offsets (faster than `pa.array` on nested lists, which checks each value's type)."""
    import pyarrow as pa

    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, rows), np.int32, len(rows)), out=offsets[1:])
    values = np.concatenate([np.asarray(row, np.int32) for row in rows]) if rows else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


@dataclass
class Tokenized:
    """A tokenized dataset before filtering: one row per example (or per turn of a split conversation)."""

    full: object  # datasets.Dataset with input_ids, labels, length, trained, truncated, lost, error, where, ...
    cache: str  # "hit", "miss" or "off"
    plan: MaskPlan


def tokenize_all(dataset, tokenizer, loss_mode=None, max_length=None, truncation_mode="keep_start",
                 chat_template=None, mask_fallback="context", source="data", use_cache=True, plan=None,
                 num_proc=None, reader=None) -> Tokenized:
    """Render, tokenize and mask every example; rows that fail keep their error. Cached on disk when use_cache,
    otherwise written to the run's scratch folder (memory-mapped, removed at exit), never held in memory.
    `plan`: the MaskPlan of this tokenizer and loss mode, when the caller has built it already.
    `num_proc`: worker processes (the recipe's dataset_num_proc).
    `reader`: the dataset holds raw rows, normalised here by this sft.data.rows.RowReader."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__}: sft needs a fast tokenizer (tokenizer.json) to locate the "
                        "trained tokens")
    if mask_fallback not in FALLBACKS:
        raise UserError(f"mask_fallback must be one of {', '.join(FALLBACKS)}; got {mask_fallback!r}")
    if truncation_mode not in ("keep_start", "keep_end"):
        raise UserError(f"truncation_mode must be keep_start or keep_end; got {truncation_mode!r}")
    plan = plan or plan_masks(tokenizer, loss_mode, chat_template)
    kwargs = dict(tokenizer=tokenizer, plan=plan, loss_mode=loss_mode, max_length=max_length,
                  truncation_mode=truncation_mode, fallback=mask_fallback, source=source, reader=reader)
    num_proc = num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None
    map_args = dict(batched=True, batch_size=512, with_indices=True, remove_columns=dataset.column_names,
                    fn_kwargs=kwargs, desc="Rendering, tokenizing and masking", num_proc=num_proc)
    if len(dataset) == 0:  # every row was bad: an empty table of the columns the summary reads
        from datasets import Dataset

        return Tokenized(Dataset(arrow_table({name: [] for name in COLUMNS})), "off", plan)
    if not use_cache:
        with frozen_heap():
            full = dataset.map(encode_batch, cache_file_name=scratch_file("tokenized"), load_from_cache_file=False,
                               new_fingerprint=scratch_name(), **map_args)
        return Tokenized(full, "off", plan)
    settings = {"loss_mode": loss_mode, "max_length": max_length, "truncation_mode": truncation_mode,
                "fallback": mask_fallback, "source": source, "rows": reader and reader.cache_key()}
    key = cache_key(dataset, tokenizer, plan, settings)
    path = cache_root() / f"{key}.arrow"
    hit = path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with frozen_heap():
        full = dataset.map(encode_batch, cache_file_name=str(path), load_from_cache_file=True, new_fingerprint=key,
                           **map_args)
    return Tokenized(full, "hit" if hit else "miss", plan)


def tokenize_dataset(dataset, tokenizer, loss_mode=None, max_length=None, truncation_mode="keep_start",
                     chat_template=None, source="data", skip_bad_rows=False, max_dropped_fraction=0.5,
                     keep_stats=False, mask_fallback="context", use_cache=False, plan=None):
    """Normalised examples -> (dataset of input_ids/labels, stats). Problems raise one UserError naming the row."""
    from sft.masks.summary import summarise

    tokenized = tokenize_all(dataset, tokenizer, loss_mode, max_length, truncation_mode, chat_template,
                             mask_fallback, source, use_cache, plan)
    keep, stats, problems = summarise(tokenized, source, skip_bad_rows, max_dropped_fraction, max_length)
    if problems:
        raise UserError(problems[0])
    result = tokenized.full.select(keep)
    if not keep_stats:
        result = result.select_columns(["input_ids", "labels"])
    return result, stats
