"""Streamed rows: each source's rows read lazily (local files line by line, or a Hub dataset with
`streaming=True`) with where each came from, and several sources interleaved into one IterableDataset.
sft/data/streaming.py checks, normalises and masks them as training reads them."""

import json
from pathlib import Path

from sft.data.formats import detect_format
from sft.data.sources import LOCAL_BUILDERS, Source, source_files
from sft.errors import UserError



def json_lines(path: Path):
    """(where, row, problem) per non-blank line of a JSON Lines file; a line that is not a JSON object is a bad row
    (named by file and line) rather than the end of the stream."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, None, f"not UTF-8 (byte {err.start + 1} of the line); save the file as UTF-8"
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                yield where, None, f"not valid JSON: {err.msg} (column {err.colno})"
                continue
            if not isinstance(row, dict):
                yield where, None, f"each line must be a JSON object, got {type(row).__name__}"
                continue
            yield where, row, None


def builder_rows(path: Path):
    """(where, row, None) of a JSON array, CSV, Parquet or text file, streamed by datasets' own builder."""
    from datasets import load_dataset

    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(f"{path}: unsupported file type (use {', '.join(LOCAL_BUILDERS)})")
    try:
        for index, row in enumerate(load_dataset(builder, data_files=[str(path)], split="train", streaming=True)):
            yield f"{path} row {index + 1}", row, None
    except (ValueError, TypeError, OSError) as err:  # datasets' parser errors name neither the file nor the row
        raise UserError(f"{path}: could not read as {builder}: {str(err).strip().splitlines()[0]}") from err


def is_json_lines(path: Path) -> bool:
    if path.suffix == ".jsonl":
        return True
    with path.open("rb") as handle:
        return path.suffix == ".json" and handle.read(64).lstrip()[:1] != b"["


def hub_rows(source: Source):
    """(where, row, None) of a Hub dataset (or any name datasets.load_dataset streams)."""
    from datasets import load_dataset

    try:
        stream = load_dataset(source.path, name=source.name, split=source.split, data_files=source.data_files,
                              data_dir=source.data_dir, streaming=True)
    except FileNotFoundError as err:
        raise UserError(f"{source.label}: dataset {source.path} not found locally or on the Hub "
                        f"({str(err).splitlines()[0]})") from err
    except (ValueError, ConnectionError, OSError) as err:
        raise UserError(f"{source.label}: {source.path}: {str(err).splitlines()[0]}") from err
    for index, row in enumerate(stream):
        yield f"{source.path}[{source.split}] row {index + 1}", row, None


def raw_rows(source: Source):
    """(where, row or None, problem or None) of one source, in order, read lazily."""
    files = source_files(source.path, source.data_files)
    if files is None:
        yield from hub_rows(source)
        return
    for path in files:
        yield from json_lines(path) if is_json_lines(path) else builder_rows(path)


def shaped(row: dict, source: Source, text_field: str) -> dict:
    """A row with the source's `columns` kept and its `column_mapping` (and dataset_text_field) applied."""
    if source.columns:
        row = {name: row.get(name) for name in source.columns}
    mapping = dict(source.column_mapping or {})
    if text_field != "text" and text_field in row and "text" not in row:
        mapping.setdefault(text_field, "text")
    return {mapping.get(name, name): value for name, value in row.items()}


def stream_generator(source: Source, index: int, text_field: str):
    """IterableDataset.from_generator's generator: one source's rows, with where they came from. Each row travels
    as JSON text: datasets would otherwise give every row of a mixture the columns of the others' rows."""
    for position, (where, row, problem) in enumerate(raw_rows(source)):
        text = None if row is None else json.dumps(shaped(row, source, text_field), ensure_ascii=False, default=str)
        yield {"where": where, "row": text, "problem": problem, "source": index, "position": position}


def stream_features():
    from datasets import Features, Value

    return Features({"where": Value("string"), "row": Value("string"), "problem": Value("string"),
                     "source": Value("int32"), "position": Value("int64")})


def source_format(source: Source, recipe, text_field: str) -> str:
    """The format of a source, told from its first row that is a JSON object (the stream is not read further)."""
    for where, row, _ in raw_rows(source):
        if row is None:
            continue
        if source.columns:
            missing = [c for c in source.columns if c not in row]
            if missing:
                raise UserError(f"{source.label}: columns {missing} not found; the first row ({where}) has "
                                f"{sorted(row)}")
        unknown = [c for c in (source.column_mapping or {}) if c not in row]
        if unknown:
            raise UserError(f"{source.label}: column_mapping names columns {unknown} that the first row ({where}) "
                            f"does not have (it has {sorted(row)})")
        return detect_format(shaped(row, source, text_field), source.format or recipe.sft.dataset_format,
                             source.label, "text")
    raise UserError(f"{source.label}: the dataset is empty")


def row_stream(sources: list[Source], seed: int, text_field: str):
    """One IterableDataset of raw rows for all sources: several are interleaved (fractions as probabilities,
    stopping when one runs out so none is oversampled; otherwise alternating until every row was read once)."""
    from datasets import IterableDataset, interleave_datasets

    streams = [IterableDataset.from_generator(stream_generator, features=stream_features(), gen_kwargs={
        "source": source, "index": index, "text_field": text_field}) for index, source in enumerate(sources)]
    if len(streams) == 1:
        return streams[0]
    fractions = [s.fraction for s in sources]
    if all(f is not None for f in fractions):
        return interleave_datasets(streams, probabilities=[f / sum(fractions) for f in fractions], seed=seed,
                                   stopping_strategy="first_exhausted")
    return interleave_datasets(streams, stopping_strategy="all_exhausted_without_replacement")
