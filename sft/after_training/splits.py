"""Deterministic train/validation/test splits of data files (`sft data split`): exact duplicates removed first,
then a seeded shuffle cut by the ratios. Inputs are never changed."""

import json
import math
import random
import re
from pathlib import Path

from sft.after_training.curation import example_text, read_rows, refuse_overwriting_inputs, write_rows
from sft.after_training.duplicates import DuplicateIndex
from sft.errors import UserError
from sft.io import write_atomic

SPLIT_NAMES = ("train", "validation", "test")


def parse_ratios(text: str) -> list[float]:
    parts = re.split(r"[/,:]", text)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"--ratios {text}: give numbers like 80/10/10") from None
    if not 2 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise UserError(f"--ratios {text}: give two or three non-negative parts like 80/10/10 or 90/10")
    total = sum(values)
    if not (math.isclose(total, 100) or math.isclose(total, 1)):
        # Rescaling would hide a forgotten part (80/10 meant 80/10/10?): say so instead.
        raise UserError(f"--ratios {text}: the parts add up to {total:g}; they must add up to 100 (80/10/10) or 1 "
                        "(0.8/0.1/0.1)")
    return [v / total for v in values]


def split(files: list[str], out_dir: Path, ratios: list[float], seed: int = 0) -> dict:
    """Exact duplicates removed first (so no example lands in two splits), then a seeded shuffle cut by the
    ratios. The same input, ratios and seed give the same files."""
    for name in SPLIT_NAMES[:len(ratios)]:
        refuse_overwriting_inputs(out_dir / f"{name}.jsonl", files)
    refuse_overwriting_inputs(out_dir / "split.json", files)
    rows, columns, index, duplicates = [], [], DuplicateIndex(threshold=1.0), 0
    for path in files:
        raw, examples, _ = read_rows(path)
        columns += [c for c in (raw[0].keys() if raw else []) if c not in columns]
        for number, (row, example) in enumerate(zip(raw, examples), start=1):
            if example is not None and index.check_and_add(example_text(example), f"{path}:{number}"):
                duplicates += 1
                continue
            rows.append(row)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    sizes = [round(r * len(rows)) for r in ratios[:-1]]
    sizes.append(len(rows) - sum(sizes))
    report, start = {"rows": len(rows) + duplicates, "exact_duplicates_removed": duplicates, "seed": seed}, 0
    for name, size in zip(SPLIT_NAMES, sizes):
        chosen = [rows[i] for i in order[start:start + size]]
        start += size
        target = out_dir / f"{name}.jsonl"
        write_rows(target, chosen, columns)
        report[name] = {"rows": len(chosen), "output": str(target)}
    write_atomic(out_dir / "split.json", json.dumps(report, indent=2) + "\n")
    return report
