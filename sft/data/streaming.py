"""Streaming datasets (`streaming: true` under `datasets:`, or TRL's `dataset_streaming: true`): rows are read,
checked, normalised, rendered, tokenized and masked as training reads them, so a dataset larger than memory (or
than the time one would spend preparing it) trains without a pass over all of it first.

The rows go through the same functions as the non-streaming path (sft.data.formats.normalise,
sft.masks.encode_batch), inside `IterableDataset.map`. Before anything is written, the first HEAD_ROWS rows are
checked as `sft check` checks a whole dataset (formats, template, masks, bad rows); the rest is checked as it is
met: a bad row stops the run with the same one line as without streaming, or with skip_bad_rows is reported on its
own line and counted.
"""

import itertools
import json
from dataclasses import dataclass, field

from sft.data.formats import default_loss_mode, normalise
from sft.data.mixture import recipe_sources
from sft.data.prepared import PreparedData
from sft.data.sources import Source
from sft.data.stream_rows import row_stream, source_format
from sft.errors import UserError

HEAD_ROWS = 1000  # rows checked up front (by `sft check`, and by `sft train` before it writes anything)
MAP_BATCH_ROWS = 64  # rows normalised and tokenized together: small, so bad rows are reported soon after they are read


def wants_streaming(recipe) -> bool:
    """TRL's two spellings: `streaming` of a `datasets:` mixture, `dataset_streaming` of ScriptArguments."""
    return bool(recipe.mixture.streaming or recipe.script.dataset_streaming)


# ---------------------------------------------------------------------------------------------------------------
# Reading rows as they come


@dataclass
class StreamCounts:
    """What the stream held so far. Rows are counted (and bad ones reported) once: TRL reads the first example
    before training, and the Trainer reads a stream that ends before max_steps again."""

    rows: int = 0
    examples: int = 0
    bad: int = 0
    dropped: int = 0  # every trained token past max_length
    truncated: int = 0
    read: dict = field(default_factory=dict)  # source index -> rows of it counted (its rows arrive in order)

    def is_new(self, source: int, position: int) -> bool:
        if position < self.read.get(source, 0):
            return False
        self.read[source] = position + 1
        return True


class RowMasker:
    """The `IterableDataset.map` function of a streamed run: a batch of raw rows normalised
    (sft.data.formats.normalise), rendered, tokenized and masked (sft.masks.encode_batch); only examples with
    trained tokens leave it. A bad row stops the run with the non-streaming path's one line, or, with
    skip_bad_rows, is reported on a line of its own and counted."""

    def __init__(self, formats: list[str], recipe, tokenizer, plan, loss_mode):
        self.formats = formats
        self.instruction_template = recipe.sft.instruction_template
        self.skip_bad_rows = recipe.sft.skip_bad_rows
        self.settings = dict(tokenizer=tokenizer, plan=plan, loss_mode=loss_mode,
                             max_length=recipe.training.max_length,
                             truncation_mode=recipe.training.truncation_mode, fallback=recipe.sft.mask_fallback,
                             source="training data")
        self.counts = StreamCounts()
        self.chat = False  # some example goes through the chat template

    def normalised(self, batch) -> tuple[dict, list[tuple[str, str]]]:
        """({example, where, source} of the good rows, [(where, reason)] of the bad ones)."""
        good, bad = {"example": [], "where": [], "source": []}, []
        for where, row, problem, index in zip(batch["where"], batch["row"], batch["problem"], batch["source"]):
            if problem is None:
                try:
                    example = normalise(json.loads(row), self.formats[index], self.instruction_template)
                except ValueError as err:
                    problem = str(err)
            if problem is not None:
                bad.append((where, problem))
                continue
            self.chat = self.chat or "messages" in example
            # key order kept, as without streaming: templates write mappings in the order they are given
            good["example"].append(json.dumps(example, ensure_ascii=False))
            good["where"].append(where)
            good["source"].append(index)
        return good, bad

    def encoded(self, good: dict):
        """The full table of encode_batch (input_ids, labels, trained, lost, error, where, ...) as a dict of lists."""
        from sft.masks.tokenize import encode_batch

        if not good["example"]:
            return {}
        return encode_batch(good, range(len(good["example"])), **self.settings).to_pydict()

    def __call__(self, batch) -> dict:
        counts = self.counts
        new = {where for where, source, position in zip(batch["where"], batch["source"], batch["position"])
               if counts.is_new(source, position)}
        good, bad = self.normalised(batch)
        full = self.encoded(good)
        out = {"input_ids": [], "labels": []}
        for i, ids in enumerate(full.get("input_ids", [])):
            where = full["where"][i]
            if full["error"][i]:
                bad.append((where, full["error"][i]))
            elif full["lost"][i]:
                counts.dropped += where in new
            elif full["trained"][i] == 0:
                bad.append((where, "no token would be trained in this example"))
            else:
                out["input_ids"].append(ids)
                out["labels"].append(full["labels"][i])
                counts.examples += where in new
                counts.truncated += where in new and full["truncated"][i]
        counts.rows += len(new)
        for where, reason in bad:
            self.met_bad_row(where, reason, where in new)
        return out

    def met_bad_row(self, where: str, reason: str, new: bool) -> None:
        from sft.console import say
        from sft.masks.summary import describe_bad_rows

        if not self.skip_bad_rows:
            raise UserError(describe_bad_rows([(where, reason)]))
        if not new:  # reported when it was first read
            return
        self.counts.bad += 1
        say(f"bad row skipped ({self.counts.bad} so far): {where}: {reason}")


# ---------------------------------------------------------------------------------------------------------------
# What the trainer receives


@dataclass
class StreamingData(PreparedData):
    """PreparedData whose `train` is an IterableDataset; stats, train_full and problems are those of the first
    HEAD_ROWS rows, checked up front."""

    counts: StreamCounts = None
    head_rows: int = 0

    def summary(self) -> str:
        s = self.stats
        share = s["trained_tokens"] / max(s["tokens"], 1)
        formats = ", ".join(sorted({src["format"] for src in s["sources"]}))
        return (f"data: streamed ({formats}, loss on {s['loss_mode']}); the first {self.head_rows:,} rows checked: "
                f"{s['kept']:,} examples, {share:.0%} of tokens trained, {s['skipped_bad']} bad rows")

    def final_summary(self) -> str:
        c = self.counts
        return (f"data: streamed {c.rows:,} rows: {c.examples:,} examples, {c.bad:,} bad rows skipped, "
                f"{c.dropped:,} dropped (every trained token past max_length), {c.truncated:,} truncated")


def streaming_problems(recipe, sources: list[Source], test_size) -> list[str]:
    """What a streamed run cannot do, each as the one line that says what to change."""
    problems = []
    strategy = getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy)
    if (recipe.training.max_steps or 0) <= 0:
        problems.append(f"{recipe.source}: max_steps: a streamed dataset has no length to count epochs in; set "
                        "max_steps (e.g. max_steps: 1000) or streaming: false")
    if test_size is not None:
        problems.append(f"{recipe.source}: test_split_size: a streamed dataset cannot be split "
                        "(its length is unknown); "
                        "remove test_split_size or set streaming: false")
    elif strategy not in ("no", None):
        problems.append(f"{recipe.source}: eval_strategy is {strategy} but a streamed dataset has no eval split; set "
                        "eval_strategy: no or streaming: false")
    if recipe.training.dataloader_num_workers:  # worker processes would count and report rows the run never hears of
        problems.append(f"{recipe.source}: dataloader_num_workers: a streamed dataset is checked and its bad rows "
                        "counted in the training process; set dataloader_num_workers: 0 or streaming: false")
    for source in sources:
        if "[" in (source.split or ""):  # datasets streams whole splits only
            problems.append(f"{source.label}: split {source.split}: a streamed dataset cannot be sliced; remove the "
                            "slice or set streaming: false")
        if source.weight not in (None, 1, 1.0):
            problems.append(f"{source.label}: weight: a seeded share of a streamed dataset cannot be drawn; remove "
                            "weight or set streaming: false")
    return problems


def prepare_streaming(recipe, tokenizer, limit: int | None = None, strict: bool = True) -> StreamingData:
    """The streamed counterpart of sft.data.prepare_data: the first rows checked now, the rest as they stream.

    limit: only the first `limit` rows are read and tokenized (sft preview); no stream is built."""
    from datasets import Dataset, Features, List, Value

    from sft.templates.chat import check_has_template
    from sft.masks.plan import generation_stop_tokens, plan_masks
    from sft.masks.spans import FALLBACKS
    from sft.masks.summary import column, describe_bad_rows, summarise, summary_notes
    from sft.masks.tokenize import COLUMNS, Tokenized, arrow_table

    notes = []
    loss_mode = recipe.sft.loss_mode  # TRL's loss switches were read as loss modes by sft/recipe/finalize.py
    if recipe.sft.mask_fallback not in FALLBACKS:
        raise UserError(f"{recipe.source}: mask_fallback must be one of {', '.join(FALLBACKS)}")
    sources, test_size, seed, source_notes = recipe_sources(recipe)
    notes += source_notes
    problems = streaming_problems(recipe, sources, test_size) if limit is None else []
    if strict and problems:
        raise UserError(problems[0])
    text_field = recipe.training.dataset_text_field or "text"
    formats = [source_format(source, recipe, text_field) for source in sources]
    plan = plan_masks(tokenizer, loss_mode, stop_tokens=generation_stop_tokens(recipe.model.model_name_or_path,
                                                                               tokenizer),
                      template_kwargs=recipe.sft.chat_template_kwargs)
    masker = RowMasker(formats, recipe, tokenizer, plan, loss_mode)
    raw = row_stream(sources, seed, text_field)

    # The first rows, checked as a whole dataset is without streaming (the same summary, problems and statistics).
    head = list(itertools.islice(iter(raw), HEAD_ROWS if limit is None else limit))
    good, bad = masker.normalised({key: [row[key] for row in head] for key in ("where", "row", "problem", "source")})
    if masker.chat:
        check_has_template(tokenizer, recipe.source)
    full = Dataset(arrow_table(masker.encoded(good) or {name: [] for name in COLUMNS}))
    keep, stats, head_problems = summarise(Tokenized(full, "streamed", plan), "training data", recipe.sft.skip_bad_rows,
                                           recipe.sft.max_dropped_fraction, recipe.training.max_length)
    if bad and not recipe.sft.skip_bad_rows:
        problems.append(describe_bad_rows(bad))
    problems += head_problems
    notes += summary_notes("training data", stats)
    notes.append(f"streaming: the first {len(head):,} rows are checked before training; the rest is checked, "
                 "normalised and masked as training reads it (bad rows reported as they are met)")
    source_of = {row["where"]: row["source"] for row in head}
    kept_sources = column(full.select(keep), "source")
    stats.update({
        "loss_mode": loss_mode or "/".join(sorted({default_loss_mode(f) for f in formats})),
        "skipped_bad": stats["skipped_bad"] + len(bad),
        "duplicates_removed": 0,
        "streaming": True,
        "checked_rows": len(head),
        "sources": [{"name": source.label, "format": fmt, "rows": list(source_of.values()).count(index),
                     "bad": [source_of[where] for where, _ in bad].count(index),
                     "examples": kept_sources.count(index)}
                    for index, (source, fmt) in enumerate(zip(sources, formats))],
    })
    if strict and problems:
        raise UserError(problems[0])

    ids = List(Value("int32"))
    train = None if limit is not None else raw.map(
        masker, batched=True, batch_size=MAP_BATCH_ROWS,
        remove_columns=["where", "row", "problem", "source", "position"],
        features=Features({"input_ids": ids, "labels": ids}))
    return StreamingData(train, None, stats, problems, notes, full.select(keep), None, counts=masker.counts,
                         head_rows=len(head))
