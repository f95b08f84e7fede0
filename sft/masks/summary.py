"""What a tokenized dataset holds: the rows to train on, their statistics, and the problems, each naming a row."""

from sft.io import percentiles


def column(dataset, name) -> list:
    return dataset.data.column(name).to_pylist() if dataset._indices is None else dataset[name]


def arrow_column(dataset, name):
    """One column as Arrow (no Python list), the dataset's index mapping applied."""
    if dataset._indices is None:
        return dataset.data.column(name)
    return dataset.select_columns([name]).with_format("arrow")[:][name]


def column_array(dataset, name):
    """One column as a numpy array."""
    return arrow_column(dataset, name).to_numpy()


def summarise(tokenized, source: str, skip_bad_rows: bool, max_dropped_fraction: float, max_length):
    """(indices of rows to train on, stats, problems) of a tokenized dataset, computed on its Arrow columns."""
    import numpy as np
    import pyarrow.compute as pc

    full = tokenized.full
    has_error = pc.is_valid(arrow_column(full, "error")).to_numpy(zero_copy_only=False).astype(bool)
    trained, lengths = column_array(full, "trained"), column_array(full, "length")
    lost, truncated = column_array(full, "lost").astype(bool), column_array(full, "truncated").astype(bool)
    fallback, parts = column_array(full, "fallback").astype(bool), column_array(full, "part")
    reasoning_left_out = column_array(full, "reasoning_left_out")
    untrained = ~has_error & (trained == 0) & ~lost
    problems = []
    # only the bad rows' where and reason become Python values: the errors first, then the untrained rows
    failed = full.select(np.flatnonzero(has_error))
    bad = list(zip(failed["where"], failed["error"]))
    bad += [(where, "no token would be trained in this example")
            for where in full.select(np.flatnonzero(untrained))["where"]]
    if bad and not skip_bad_rows:
        problems.append(describe_bad_rows(bad))
    n_lost = int(lost.sum())
    if len(full) and n_lost / len(full) > max_dropped_fraction:
        problems.append(f"{source}: {n_lost} of {len(full)} examples lose every trained token to "
                        f"max_length={max_length} (more than max_dropped_fraction={max_dropped_fraction}); raise "
                        "max_length or use truncation_mode: keep_end")
    keep = np.flatnonzero((trained > 0) & ~has_error)
    if not len(keep) and not problems:
        problems.append(f"{source}: no example is left to train on")
    kept_lengths = np.sort(lengths[keep])
    stats = {
        "examples": len(full),
        "kept": len(keep),
        "dropped_truncated": n_lost,
        "skipped_bad": len(bad),
        "tokens": int(kept_lengths.sum()),
        "trained_tokens": int(trained[keep].sum()),
        "truncated": int(truncated[keep].sum()),
        "fallback": int(fallback[keep].sum()),
        # conversations the template made split (split_turns, asked for, is not counted)
        "split": int(((parts == 1) & ~fallback).sum()),
        "reasoning_left_out": int(reasoning_left_out[keep].sum()),  # trained turns whose reasoning is not written
        "length_percentiles": percentiles(kept_lengths),
        "cache": tokenized.cache,
        "masks": tokenized.plan.description,
    }
    return keep, stats, problems


def summary_notes(source: str, stats: dict) -> list[str]:
    """The lines saying how many conversations were split and how many turns' reasoning is not trained, if any."""
    notes = []
    if stats.get("split"):
        notes.append(f"{source}: {stats['split']} conversation(s) split into one example per assistant turn, because "
                     "the chat template renders earlier turns differently from how the model generated them (e.g. "
                     "drops their reasoning); each turn is trained in the context the model sees")
    if stats.get("reasoning_left_out"):
        notes.append(f"{source}: {stats['reasoning_left_out']} trained assistant turn(s) carry reasoning "
                     "(reasoning_content, thinking or <think>...</think>) that the chat template does not write, so "
                     "it is not trained; check chat_template_kwargs (e.g. thinking: true) or use a template that "
                     "renders reasoning")
    return notes


def describe_bad_rows(bad: list[tuple[str, str]]) -> str:
    where, reason = bad[0]
    more = f" ({len(bad) - 1} more bad rows, e.g. {bad[1][0]}: {bad[1][1]})" if len(bad) > 1 else ""
    return f"{where}: {reason}{more}; fix the data or set skip_bad_rows: true to skip and count such rows"

