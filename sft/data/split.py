"""Mixing and the eval split, on Arrow datasets by index: each source's weight or fraction, exact duplicates
removed (compared by a digest of the example), and a seeded train/eval split."""

import json
import random
from dataclasses import dataclass

from sft.data.rows import EXAMPLE_COLUMNS, SourceRows
from sft.errors import UserError


@dataclass
class Split:
    train: object  # datasets of example, where, source
    eval: object | None
    duplicates: int = 0


def mix(parts: list[SourceRows], seed: int):
    """One dataset of the sources' rows after each source's weight (alignment-handbook: a seeded sample of that
    share of the source) or fraction (TRL: shares of the mixture, no source oversampled, first rows kept)."""
    from datasets import concatenate_datasets

    fractions = [p.source.fraction for p in parts]
    if all(f is not None for f in fractions):
        weights = [f / sum(fractions) for f in fractions]
        total = min(p.examples / w for p, w in zip(parts, weights) if w > 0)
        counts = [round(w * total) for w in weights]
    else:
        counts = [p.examples for p in parts]
    chosen = []
    for part, count in zip(parts, counts):
        rows = range(part.examples)
        if part.source.weight is not None:
            rows = list(rows)
            random.Random(seed).shuffle(rows)
            rows = sorted(rows[: int(len(rows) * part.source.weight)])
        rows = rows[:count]
        chosen.append(part.dataset if len(rows) == part.examples else part.dataset.select(rows))
    return chosen[0] if len(chosen) == 1 else concatenate_datasets(chosen)


def test_size_value(value, n: int, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: test_split_size must be a fraction in (0, 1) or a number of examples; got {value!r}")
    if value >= 1:
        if float(value) != int(value):
            raise UserError(f"{where}: test_split_size {value} is neither a fraction below 1 nor a whole number")
        value = int(value)
        if value >= n:
            raise UserError(f"{where}: test_split_size {value} leaves nothing to train on ({n} unique examples)")
    return value


def digests(dataset):
    """The example digests of a dataset (its index mapping applied), as one Arrow array."""
    return dataset.select_columns(["digest"]).with_format("arrow")[:]["digest"]


def first_occurrences(dataset):
    """Sorted indices of the first row of each distinct example."""
    import numpy as np
    import pyarrow as pa

    table = pa.table({"digest": digests(dataset), "index": np.arange(len(dataset))})
    firsts = table.group_by("digest", use_threads=False).aggregate([("index", "min")]).column("index_min")
    return np.sort(firsts.to_numpy())


def split_eval(rows, test_size, seed, where) -> Split:
    """Exact duplicates removed first (so no example is both trained and evaluated on), then a seeded split."""
    firsts = first_occurrences(rows)
    unique = rows if len(firsts) == len(rows) else rows.select(firsts)
    size = test_size_value(test_size, len(unique), where)
    parts = unique.train_test_split(test_size=size, seed=seed, shuffle=True)
    return Split(examples_only(parts["train"]), examples_only(parts["test"]), len(rows) - len(unique))


def without(rows, other) -> Split:
    """`rows` less every example `other` also has (other: the source's own eval split)."""
    import numpy as np
    import pyarrow.compute as pc

    shared = pc.is_in(digests(rows), value_set=digests(other).combine_chunks()).to_numpy(zero_copy_only=False)
    train = rows.select(np.flatnonzero(~shared)) if shared.any() else rows
    return Split(examples_only(train), examples_only(other), int(shared.sum()))


def examples_only(dataset):
    return dataset.select_columns(EXAMPLE_COLUMNS)


def decoded(dataset):
    """A dataset of example JSON strings as one of normalised rows (dicts)."""
    from datasets import Dataset

    return Dataset.from_list([json.loads(e) for e in dataset["example"]])
