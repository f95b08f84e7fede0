"""Small helpers every stage shares: files written whole or not at all, JSONL, percentiles, forking workers.
Standard library only at import (numpy inside the function), so `sft --help` stays instant."""

import gc
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sft.errors import UserError


@contextmanager
def replacing(path, mode: int | None = None) -> Iterator:
    """A text handle on a temporary file beside `path` (same filesystem), renamed over `path` once the block ends
    without error: a reader sees the old file or the whole new one, never half of one, and a failure leaves
    nothing behind. `mode` sets the permission bits (e.g. 0o755 for a script)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name per process ending in .tmp: hub pushes skip *.tmp, and the file gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` whole or not at all (see `replacing`)."""
    with replacing(path, mode) as handle:
        handle.write(text)


def recipe_yaml(values: dict, allow_unicode: bool = False) -> str:
    """A recipe as YAML: a key per line, short lists and mappings of scalars inline (`lora_target_modules: [q_proj,
    v_proj]`). PyYAML writes a mapping of scalars only as one inline `{...}`, so a recipe of scalar keys alone is
    written in block style."""
    import yaml

    options = dict(sort_keys=False, width=120, allow_unicode=allow_unicode)
    text = yaml.safe_dump(values, default_flow_style=None, **options)
    return yaml.safe_dump(values, default_flow_style=False, **options) if text.startswith("{") else text


def write_jsonl(path, records: Iterable[dict]) -> None:
    """One JSON object per line, UTF-8 as is, written whole or not at all."""
    with replacing(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path) -> list[dict]:
    """The records of a JSONL file sft wrote; blank lines are skipped, a broken line is named."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number}: not valid JSON") from None
    return records


@contextmanager
def frozen_heap() -> Iterator:
    """For forking worker processes (`datasets.map(num_proc=...)`): the objects that exist now are left out of
    garbage collection until the block ends. A forked worker shares its parent's heap until it writes to it, and a
    full collection writes to every object it visits: once a worker had allocated enough to trigger one, each
    worker copied the parent's whole heap (with torch and transformers imported, about 100 MB per worker), so
    peak memory rose with the number of rows until then."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


PERCENTILES = (50, 90, 95, 99)


def percentiles(values: Iterable[int], points: tuple[int, ...] = PERCENTILES) -> dict:
    """min, the nearest-rank percentiles (the smallest value with at least p% of the values at or below it: numpy's
    method="inverted_cdf", definition 1 of Hyndman & Fan), max and mean. Nearest rank keeps every percentile a
    length that occurs in the data. {} for no values."""
    import numpy as np

    ordered = np.sort(np.asarray(list(values)))
    if ordered.size == 0:
        return {}
    picked = np.percentile(ordered, points, method="inverted_cdf")
    return {"min": ordered[0].item(), **{f"p{p}": v.item() for p, v in zip(points, picked)},
            "max": ordered[-1].item(), "mean": ordered.mean().item()}
