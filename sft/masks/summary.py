"""What a tokenized dataset holds: the rows to train on, their statistics, and the problems, each naming a row."""

from sft.io import percentiles


def column(dataset, name) -> list:
    return dataset.data.column(name).to_pylist() if dataset._indices is None else dataset[name]


def summarise(tokenized, source: str, skip_bad_rows: bool, max_dropped_fraction: float, max_length):
    """(indices of rows to train on, stats, problems) of a tokenized dataset."""
    full = tokenized.full
    errors, wheres = column(full, "error"), column(full, "where")
    trained, lengths = column(full, "trained"), column(full, "length")
    lost, truncated, fallback = column(full, "lost"), column(full, "truncated"), column(full, "fallback")
    parts = column(full, "part")
    problems = []
    bad = [(wheres[i], errors[i]) for i in range(len(full)) if errors[i]]
    bad += [(wheres[i], "no token would be trained in this example") for i in range(len(full))
            if not errors[i] and trained[i] == 0 and not lost[i]]
    if bad and not skip_bad_rows:
        problems.append(describe_bad_rows(bad))
    n_lost = sum(lost)
    if full and n_lost / len(full) > max_dropped_fraction:
        problems.append(f"{source}: {n_lost} of {len(full)} examples lose every trained token to "
                        f"max_length={max_length} (more than max_dropped_fraction={max_dropped_fraction}); raise "
                        "max_length or use truncation_mode: keep_end")
    keep = [i for i in range(len(full)) if trained[i] > 0 and not errors[i]]
    if not keep and not problems:
        problems.append(f"{source}: no example is left to train on")
    kept_lengths = sorted(lengths[i] for i in keep)
    stats = {
        "examples": len(full),
        "kept": len(keep),
        "dropped_truncated": n_lost,
        "skipped_bad": len(bad),
        "tokens": sum(kept_lengths),
        "trained_tokens": sum(trained[i] for i in keep),
        "truncated": sum(1 for i in keep if truncated[i]),
        "fallback": sum(1 for i in keep if fallback[i]),
        # conversations the template made split (split_turns, asked for, is not counted)
        "split": sum(1 for part, fell_back in zip(parts, fallback) if part == 1 and not fell_back),
        "length_percentiles": percentiles(kept_lengths),
        "cache": tokenized.cache,
        "masks": tokenized.plan.description,
    }
    return keep, stats, problems


def split_note(source: str, stats: dict) -> str | None:
    """The one line saying how many conversations were split, if any."""
    if not stats.get("split"):
        return None
    return (f"{source}: {stats['split']} conversation(s) split into one example per assistant turn, because the chat "
            "template renders earlier turns differently from how the model generated them (e.g. drops their "
            "reasoning); each turn is trained in the context the model sees")


def describe_bad_rows(bad: list[tuple[str, str]]) -> str:
    where, reason = bad[0]
    more = f" ({len(bad) - 1} more bad rows, e.g. {bad[1][0]}: {bad[1][1]})" if len(bad) > 1 else ""
    return f"{where}: {reason}{more}; fix the data or set skip_bad_rows: true to skip and count such rows"

