"""Rows: every row of a source checked and normalised in Arrow, by batched `datasets.map` (with the recipe's
`dataset_num_proc`), into JSON examples written to disk: no Python list of the whole dataset is built. A bad row
is kept as its reason until it is counted and named (file and line, computed from its position).

A source that nothing mixes or splits skips that pass: its raw rows go to the tokenizing pass with the RowReader
that normalises them there, and its bad rows come out of that pass's `bad` column."""

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import NamedTuple

from sft.data.formats import detect_format, normalise, renders_chat
from sft.data.sources import Part, Source, Where, load_source_parts
from sft.masks.cache import scratch_file, scratch_name
from sft.errors import UserError
from sft.io import frozen_heap

EXAMPLE_COLUMNS = ["example", "where", "source"]  # what the masks read


class BadRow(NamedTuple):
    where: str
    reason: str


@dataclass
class RowReader:
    """How the raw rows of one source are normalised: by the normalising pass, or, for a source that nothing mixes
    or splits, by the tokenizing pass itself (sft.masks.tokenize), which then reads the data once instead of twice."""

    fmt: str
    instruction_template: str
    where: object  # row position -> "file:line" (a Where, or a JoinedWhere over several files)
    source_index: int = 0

    def read(self, batch: dict, indices) -> tuple[list[dict | None], list[str | None]]:
        """Each row of a `Dataset.map` batch normalised, or None with the reason it is bad."""
        names = list(batch)
        examples, reasons = [], []
        for position in range(len(indices)):
            try:
                example, reason = normalise({name: batch[name][position] for name in names}, self.fmt,
                                            self.instruction_template), None
            except ValueError as err:
                example, reason = None, str(err)
            examples.append(example)
            reasons.append(reason)
        return examples, reasons

    def cache_key(self) -> dict:
        """What the rows' normalised form and their where strings depend on besides the rows' contents (the line
        numbers move with blank lines, which the rows do not show)."""
        wheres = self.where.wheres if isinstance(self.where, JoinedWhere) else [self.where]
        return {"format": self.fmt, "instruction_template": self.instruction_template, "source": self.source_index,
                "where": [[w.label, w.first, None if w.lines is None else blake2b(w.lines.tobytes()).hexdigest()]
                          for w in wheres]}


@dataclass
class JoinedWhere:
    """Where the rows of several parts, read one after the other as one dataset, came from."""

    wheres: list[Where]
    starts: list[int]  # each part's first row in the joined dataset

    def __call__(self, index: int) -> str:
        part = bisect_right(self.starts, index) - 1
        return self.wheres[part](index - self.starts[part])


@dataclass
class SourceRows:
    """One source, normalised: a dataset of its good rows (example JSON, where, digest, source index) and the bad
    rows, named."""

    source: Source
    format: str
    rows: int
    dataset: object = None
    bad: list[BadRow] = field(default_factory=list)
    chat: bool = False  # some example goes through the chat template
    reader: RowReader | None = None  # set when `dataset` holds the raw rows, normalised as they are tokenized

    @property
    def examples(self) -> int:
        return 0 if self.dataset is None else len(self.dataset)


def normalise_batch(batch, indices, reader: RowReader):
    """`Dataset.map(batched=True)` function: each raw row as example JSON, or its reason when it is bad."""
    import pyarrow as pa

    examples, digests = [], []
    normalised, reasons = reader.read(batch, indices)
    for example in normalised:
        text = digest = None
        if example is not None:
            # key order kept: templates write mappings (tools, tool-call arguments) in the order they are given
            text = json.dumps(example, ensure_ascii=False)
            digest = blake2b(text.encode(), digest_size=16).digest()  # exact duplicates, compared compactly
        examples.append(text)
        digests.append(digest)
    return pa.table({"example": pa.array(examples, pa.string()), "where": pa.array([reader.where(i) for i in indices]),
                     "digest": pa.array(digests, pa.binary(16)),
                     "source": pa.array([reader.source_index] * len(indices), pa.int32()),
                     "bad": pa.array(reasons, pa.string())})


def normalised_part(part: Part, reader: RowReader, source: Source, num_proc: int | None) -> SourceRows:
    import pyarrow.compute as pc

    raw = part.dataset
    result = SourceRows(source, reader.fmt, len(raw))
    if len(raw) == 0:
        return result
    num_proc = num_proc if num_proc and num_proc > 1 and len(raw) >= 2 * num_proc else None
    with frozen_heap():
        mapped = raw.map(normalise_batch, batched=True, batch_size=1000, with_indices=True, num_proc=num_proc,
                         remove_columns=raw.column_names, cache_file_name=scratch_file("normalised"),
                         load_from_cache_file=False, new_fingerprint=scratch_name(), fn_kwargs=dict(reader=reader))
    result.bad, good = bad_rows(mapped)
    result.dataset = mapped.select_columns(["example", "where", "digest", "source"]).select(good)
    if len(good):
        result.chat = pc.any(pc.starts_with(mapped.data.column("example"), '{"messages"')).as_py()
    return result


def bad_rows(mapped) -> tuple[list[BadRow], object]:
    """(the rows that failed normalising, named; the indices of the others) of a dataset with where and bad."""
    import numpy as np
    import pyarrow.compute as pc

    is_bad = pc.is_valid(mapped.data.column("bad"))
    bad = []
    if pc.any(is_bad).as_py():
        bad = [BadRow(row["where"], row["bad"])
               for row in mapped.data.filter(is_bad).select(["where", "bad"]).to_pylist()]
    return bad, np.flatnonzero(~is_bad.to_numpy(zero_copy_only=False))


def prepare_columns(raw, source: Source, recipe):
    """(dataset with the format's column names, format) for one file or dataset of a source."""
    if source.columns:
        missing = [c for c in source.columns if c not in raw.column_names]
        if missing:
            raise UserError(f"{source.label}: columns {missing} not found; the data has {raw.column_names}")
        raw = raw.select_columns(source.columns)
    mapping = dict(source.column_mapping or {})
    text_field = recipe.training.dataset_text_field or "text"
    if text_field != "text" and text_field in raw.column_names and "text" not in raw.column_names:
        mapping.setdefault(text_field, "text")
    if mapping:
        missing = [c for c in mapping if c not in raw.column_names]
        if missing:
            raise UserError(f"{source.label}: column_mapping names columns {missing} that the data does not have "
                            f"(it has {raw.column_names})")
        raw = raw.rename_columns(mapping)
    return raw, detect_format(raw.column_names, source.format or recipe.sft.dataset_format, source.label)


def read_source(source: Source, recipe, index: int = 0, split: str | None = None,
                normalise_now: bool = True) -> SourceRows:
    """One source's rows, normalised. normalise_now=False: where its files agree in format and columns, its raw
    rows with the reader that normalises them as they are tokenized (`SourceRows.reader`)."""
    from datasets import concatenate_datasets

    loaded = load_source_parts(source.path, source.name, split or source.split, source.data_files, source.data_dir,
                               source.label)
    parts, fmt = [], None
    for part in loaded:
        raw, part_format = prepare_columns(part.dataset, source, recipe)
        if fmt is not None and part_format != fmt:
            raise UserError(f"{source.label}: {part.where.label} holds {part_format} data and the files before it "
                            f"{fmt}; list them as separate sources")
        parts.append(Part(raw, part.where))
        fmt = part_format
    total, columns = sum(len(p.dataset) for p in parts), parts[-1].dataset.column_names
    if total == 0:
        raise UserError(f"{source.label}: the dataset is empty")
    template = recipe.sft.instruction_template
    if not normalise_now and all(p.dataset.features == parts[0].dataset.features for p in parts):
        starts = [0]
        for part in parts[:-1]:
            starts.append(starts[-1] + len(part.dataset))
        where = parts[0].where if len(parts) == 1 else JoinedWhere([p.where for p in parts], starts)
        raw = parts[0].dataset if len(parts) == 1 else concatenate_datasets([p.dataset for p in parts])
        return SourceRows(source, fmt, total, raw, chat=renders_chat(fmt, raw.features, template),
                          reader=RowReader(fmt, template, where, index))
    result = SourceRows(source, fmt, total)
    datasets = []
    for part in parts:
        rows = normalised_part(part, RowReader(fmt, template, part.where, index), source,
                               recipe.training.dataset_num_proc)
        result.bad += rows.bad
        result.chat = result.chat or rows.chat
        if rows.examples:
            datasets.append(rows.dataset)
    if not datasets:
        raise UserError(no_row_fits(result, columns))
    result.dataset = datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)
    return result


def no_row_fits(result: SourceRows, columns: list[str]) -> str:
    """Every row is bad: most often a forced format (dataset_format, format) that the data does not have."""
    where, reason = result.bad[0]
    try:
        detected = detect_format(columns)
    except UserError:
        detected = None
    if detected and detected != result.format:
        return (f"{where}: {reason}; none of the {result.rows} rows is {result.format} data; the data looks like "
                f"{detected} (columns {', '.join(columns)}): remove dataset_format or set it to {detected}")
    return f"{where}: {reason}; none of the {result.rows} rows can be used: fix the data"


def read_sources(sources: list[Source], recipe, normalise_now: bool = True) -> list[SourceRows]:
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    shown = is_progress_bar_enabled()
    disable_progress_bar()  # reading files is quick; a bad file should read as one error line
    try:
        return [read_source(source, recipe, index, normalise_now=normalise_now) for index, source in enumerate(sources)]
    finally:
        if shown:
            enable_progress_bar()


@dataclass
class FileRow:
    raw: dict
    example: dict | None  # normalised, or None when the row is bad
    where: str
    reason: str | None = None


@dataclass
class FileRows:
    """One data file read, its format detected: `rows()` yields every row, raw and normalised, named."""

    path: str
    format: str
    parts: list[Part]
    instruction_template: str = "chat"

    def __len__(self) -> int:
        return sum(len(part.dataset) for part in self.parts)

    def rows(self):
        for part in self.parts:
            for index, raw in enumerate(part.dataset):
                try:
                    yield FileRow(raw, normalise(raw, self.format, self.instruction_template), part.where(index))
                except ValueError as err:
                    yield FileRow(raw, None, part.where(index), str(err))


def read_file(path: str, instruction_template: str = "chat", forced_format: str | None = None) -> FileRows:
    """Read a data file (or folder, or glob), detect its format and normalise its rows: what curation and
    evaluation read data files with, as training does."""
    parts = load_source_parts(str(path))
    columns = parts[0].dataset.column_names
    return FileRows(str(path), detect_format(columns, forced_format, str(path)), parts, instruction_template)
