"""Sources: one dataset of the recipe (a local file, folder or glob, or a Hub dataset) read into Arrow, with
where each row came from (file and line for JSON Lines, row number otherwise) computed from its position."""

import json
from dataclasses import dataclass
from pathlib import Path

from sft.errors import UserError

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass
class Source:
    """One dataset of the recipe, however it was written (dataset_name, a `datasets:` or `dataset_mixture` entry)."""

    label: str  # how messages name it: the recipe key it came from
    path: str
    name: str | None = None
    split: str = "train"
    data_files: object = None
    data_dir: str | None = None
    columns: list | None = None
    fraction: float | None = None  # TRL: target share of the mixture
    weight: float | None = None  # alignment-handbook: share of this dataset that is kept
    format: str | None = None
    column_mapping: dict | None = None


def local_data_files(name: str) -> list[Path] | None:
    """The files a local `dataset_name` stands for (a file, a folder, or a glob), or None if it is not local."""
    path = Path(name).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_BUILDERS and p.is_file())
        if not files:
            raise UserError(f"{name}: folder has no data files ({', '.join(LOCAL_BUILDERS)})")
        return files
    if any(ch in name for ch in "*?["):
        files = sorted(Path().glob(name)) if not path.is_absolute() else sorted(Path("/").glob(name.lstrip("/")))
        files = [f for f in files if f.is_file()]
        if not files:
            raise UserError(f"{name}: no files match this pattern")
        return files
    if path.suffix in LOCAL_BUILDERS or name.startswith((".", "/", "~")):
        raise UserError(f"{name}: data file not found")
    return None


@dataclass
class Where:
    """Where the rows of one part (a file, or a Hub split) came from, computed from a row's position: "file:line"
    for JSON Lines, "file row N" otherwise. Line numbers are kept as a compact array, not as strings per row."""

    label: str  # the file, or "name[split]"
    lines: object = None  # array of the line number of each row (JSON Lines), or None
    first: int = 0  # the file's row number of the part's first row (a slice of the file starts further in)

    def __call__(self, index: int) -> str:
        if self.lines is not None:
            return f"{self.label}:{self.lines[index]}"
        return f"{self.label} row {self.first + index + 1}"


@dataclass
class Part:
    """One file (or Hub split) of a source, as an Arrow dataset."""

    dataset: object
    where: Where


def check_json_file(path: Path) -> None:
    """Name the file and line of the first malformed row of a JSON file (datasets' own errors name neither)."""
    with path.open("rb") as handle:
        first = handle.read(1).lstrip()
        handle.seek(0)
        if path.suffix == ".json" and first == b"[":
            from sft.errors import not_utf8

            raw = handle.read()
            try:
                json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise not_utf8(path, raw, err.start) from None
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
            return
        for number, line in utf8_lines(handle, path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")


def row_lines(path: Path):
    """The line number of each row of a JSON Lines file (blank lines hold none), every line checked to be UTF-8;
    None for a JSON array. Parsing is left to datasets: check_json_file names a bad line only when it fails."""
    from array import array

    with path.open("rb") as handle:
        if path.suffix == ".json" and handle.read(1).lstrip() == b"[":
            return None
        handle.seek(0)
        return array("I", (number for number, line in utf8_lines(handle, path) if line.strip()))


def utf8_lines(handle, path: Path):
    """(line number, line) of a binary file handle; a line that is not UTF-8 fails naming file, line and column."""
    from sft.errors import not_utf8

    for number, line in enumerate(handle, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise not_utf8(path, line, err.start, number) from None
        yield number, line


def load_local_file(path: Path) -> Part:
    """One local file as a dataset (datasets' Arrow cache, memory-mapped), with where each row is."""
    from datasets import load_dataset

    from sft.masks.cache import file_digest

    builder = LOCAL_BUILDERS.get(path.suffix)
    if builder is None:
        raise UserError(f"{path}: unsupported file type (use {', '.join(LOCAL_BUILDERS)})")
    if path.stat().st_size < 65536 and not path.read_bytes().strip():  # datasets fails with an empty message
        raise UserError(f"{path}: the dataset is empty")
    lines = row_lines(path) if builder == "json" else None
    if builder in ("csv", "text"):
        with path.open("rb") as handle:
            for _ in utf8_lines(handle, path):
                pass
    from datasets.utils import logging as datasets_logging

    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its parser logs an error before raising it
    try:
        # datasets keys its cache by path and modification time; the config name adds the contents
        dataset = load_dataset(builder, name=f"sft-{file_digest(path)}", data_files=[str(path)], split="train")
    except Exception as err:  # datasets wraps parser errors in its own types; name the file and line instead
        if builder == "json":
            check_json_file(path)
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise UserError(f"{path}: could not read as {builder}: {reason}") from err
    finally:
        datasets_logging.set_verbosity(verbosity)
    if builder == "json":
        if lines is None or len(lines) != len(dataset):  # rows datasets read some other way than one per line
            check_json_file(path)
            lines = None if lines is None or len(lines) != len(dataset) else lines
    return Part(dataset, Where(str(path), lines))


def concatenated(parts: list[Part], where):
    """One dataset from several files' parts, their column types unified where they differ."""
    from datasets import concatenate_datasets

    if len(parts) == 1:
        return parts[0].dataset
    datasets = [parts[0].dataset]
    try:
        datasets += [p.dataset.cast(parts[0].dataset.features) for p in parts[1:]]
        return concatenate_datasets(datasets)
    except (ValueError, TypeError) as err:
        raise UserError(f"{where}: files have different columns ({str(err).splitlines()[0]}); list them as "
                        "separate sources") from err


def load_source(name: str, config: str | None = None, split: str = "train", data_files=None, data_dir=None):
    """One source: a local file/folder/glob, or anything `datasets.load_dataset` accepts (a Hub name)."""
    return concatenated(load_source_parts(name, config, split, data_files, data_dir), name)


def source_files(name: str, data_files=None) -> list[Path] | None:
    """The local files a source stands for (a file, folder or glob, or a json/csv/parquet/text builder with
    data_files), or None for a dataset `datasets.load_dataset` finds (the Hub)."""
    if data_files is None:
        return local_data_files(name)
    if name not in set(LOCAL_BUILDERS.values()):
        return None
    listed = [data_files] if isinstance(data_files, str) else data_files
    if not (isinstance(listed, list) and all(isinstance(f, str) for f in listed)):
        return None
    return [f for entry in listed for f in (local_data_files(entry) or [Path(entry)])]


def load_source_parts(name: str, config=None, split="train", data_files=None, data_dir=None, label=None) -> list[Part]:
    """One part per local file (file, folder or glob), or one through `datasets.load_dataset` (a Hub name, or a
    builder such as json with data_files)."""
    from datasets import load_dataset

    label = label or name
    files = source_files(name, data_files)
    if files is not None:
        parts = [load_local_file(f) for f in files]
        return sliced(parts, split, label) if "[" in split else parts
    try:
        dataset = load_dataset(name, name=config, split=split, data_files=data_files, data_dir=data_dir)
    except FileNotFoundError as err:
        raise UserError(f"{label}: dataset {name} not found locally or on the Hub "
                        f"({str(err).splitlines()[0]})") from err
    except (ValueError, ConnectionError, OSError) as err:
        raise UserError(f"{label}: {name}: {str(err).splitlines()[0]}") from err
    return [Part(dataset, Where(f"{name}[{split}]"))]


def sliced(parts: list[Part], split: str, label: str) -> list[Part]:
    """The rows a split slice ("train[:20%]", "train[100:200]", datasets' own syntax) names of local files, whose
    rows, file after file, are the one split "train". Rows keep the file and line they came from."""
    from datasets import ReadInstruction

    total = sum(len(p.dataset) for p in parts)
    try:
        ranges = ReadInstruction.from_spec(split).to_absolute({"train": total})
    except (ValueError, AssertionError) as err:
        ranges, reason = None, str(err).splitlines()[0]
    if ranges is None or any(r.splitname != "train" for r in ranges):
        raise UserError(f"{label}: split {split!r} cannot be read from local files"
                        f"{f' ({reason})' if ranges is None else ''}: their rows are the split train; slice it as "
                        "train[:20%], train[:1000] or train[100:200]")
    chosen, start = [], 0
    for part in parts:
        size = len(part.dataset)
        for r in ranges:
            first, last = max(r.from_ - start, 0), min(r.to - start, size)
            if first < last:
                lines = part.where.lines[first:last] if part.where.lines is not None else None
                chosen.append(Part(part.dataset.select(range(first, last)),
                                   Where(part.where.label, lines, part.where.first + first)))
        start += size
    if not chosen:
        raise UserError(f"{label}: split {split!r} holds none of the {total} rows")
    return chosen
