"""Data curation before a run: token-length statistics, exact and near-duplicate removal across files, filters
for empty answers and length bounds, and deterministic train/validation/test splits.

Inputs are read with sft.data (every format sft trains on) and never changed: results go to new JSONL files, each
written beside its target and moved into place when complete. Rows are written as they were read (only the
columns the file has), so the output trains exactly like the input."""

import hashlib
import json
import math
import random
import re
from pathlib import Path

from sft.errors import UserError
from sft.io import percentiles, write_atomic, write_jsonl

SHINGLE = 5  # characters per shingle for near-duplicate detection
NUM_PERM = 128  # MinHash signature length
BANDS = 32  # LSH bands of NUM_PERM // BANDS rows: candidates at Jaccard ~0.5 and above are compared exactly


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_rows(path: str, instruction_template: str = "chat") -> tuple[list[dict], list[dict], str]:
    """(raw rows, normalised rows, format) of one data file. A row that cannot be normalised is kept raw with a
    None normalised form, so filters can count and drop it."""
    from sft.data import detect_format, load_source, normalise

    if not Path(path).is_file():
        raise UserError(f"{path}: data file not found")
    dataset = load_source(path)
    fmt = detect_format(dataset.column_names, source=path)
    raw, normalised = [], []
    for row in dataset:
        raw.append(row)
        try:
            normalised.append(normalise(row, fmt, instruction_template))
        except ValueError:
            normalised.append(None)
    return raw, normalised, fmt


def example_text(example: dict | None) -> str:
    """The content of an example without any template: what duplicates are judged on."""
    if example is None:
        return ""
    if example.get("messages") is not None:
        return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in example["messages"])
    if example.get("completion") is not None:
        return f"{example['prompt']}\n{example['completion']}"
    return example.get("text") or ""


ANSWER_COLUMNS = ("output", "completion", "response")


def answer_text(example: dict | None) -> str:
    if example is None:
        return ""
    if example.get("messages") is not None:
        answers = [m for m in example["messages"] if m.get("role") == "assistant"]
        return (answers[-1].get("content") or "") if answers else ""
    if example.get("completion") is not None:
        return example["completion"]
    return example.get("text") or ""


def rendered_text(example: dict, tokenizer) -> str:
    """The example as training renders it (chat template for conversations), for token counts."""
    if example.get("messages") is not None and tokenizer.chat_template:
        return tokenizer.apply_chat_template(example["messages"], tokenize=False)
    return example_text(example) if example.get("messages") is not None else (
        f"{example['prompt']}{example['completion']}" if example.get("completion") is not None else example["text"])


def token_lengths(examples: list[dict], tokenizer) -> list[int]:
    texts = [rendered_text(e, tokenizer) for e in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    write_jsonl(path, [{k: row[k] for k in columns if row.get(k) is not None} for row in rows])


def output_path(out_dir: Path, source: str, inputs: list[str]) -> Path:
    """OUT/<name>.jsonl; two inputs with the same name keep apart by their folder."""
    path = Path(source)
    same_name = [p for p in inputs if Path(p).stem == path.stem]
    stem = path.stem if len(same_name) == 1 else f"{path.parent.name}_{path.stem}"
    return refuse_overwriting_inputs(out_dir / f"{stem}.jsonl", inputs)


def refuse_overwriting_inputs(target: Path, inputs: list[str]) -> Path:
    if any(target.resolve() == Path(p).resolve() for p in inputs):
        raise UserError(f"{target}: would overwrite an input; choose another output folder")
    return target


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def stats(files: list[str], tokenizer, out_dir: Path, bins: int = 40) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    report, all_lengths = {}, {}
    for path in files:
        _, examples, fmt = read_rows(path)
        good = [e for e in examples if e is not None]
        lengths = all_lengths[path] = token_lengths(good, tokenizer)
        report[path] = {"format": fmt, "rows": len(examples), "unreadable_rows": len(examples) - len(good),
                        "empty_answers": sum(1 for e in good if not answer_text(e).strip()),
                        "tokens": sum(lengths), **percentiles(lengths)}
    pooled = [n for lengths in all_lengths.values() for n in lengths]
    low, high = (min(pooled), max(pooled)) if pooled else (0, 1)
    # Shared integer-aligned bins, so files compare bar for bar.
    width = max(1, -(-(high - low + 1) // bins))
    edges = list(range(low, high + width + 1, width))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for index, (path, lengths) in enumerate(all_lengths.items()):
        if lengths:
            ax.hist(lengths, bins=edges, alpha=0.6, color=f"C{index}", label=f"{Path(path).name} (n={len(lengths)}, "
                    f"p50 {report[path]['p50']}, p95 {report[path]['p95']})")
    ax.set_xlabel("tokens per example (rendered as in training)")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "token_lengths.png")
    plt.close(fig)
    write_atomic(out_dir / "stats.json", json.dumps(report, indent=2) + "\n")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Duplicates


def canonical(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, size: int = SHINGLE) -> set[str]:
    text = canonical(text)
    return {text[i:i + size] for i in range(max(len(text) - size + 1, 1))}


PRIME = (1 << 31) - 1  # small enough that a * h + b stays inside int64


def _permutations(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(1, PRIME, NUM_PERM, dtype=np.int64), rng.integers(0, PRIME, NUM_PERM, dtype=np.int64)


PERMUTATIONS = None


def minhash(items: set[str]) -> list[int]:
    """MinHash signature: for each of NUM_PERM hash functions (a*h + b mod p), the least value over the set."""
    import numpy as np

    global PERMUTATIONS
    if PERMUTATIONS is None:
        PERMUTATIONS = _permutations()
    a, b = PERMUTATIONS
    hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little") % PRIME
                       for s in items], dtype=np.int64)
    return ((np.outer(a, hashes) + b[:, None]) % PRIME).min(axis=1).tolist()


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class DuplicateIndex:
    """Exact duplicates by hash of the canonical text; near duplicates by MinHash LSH over character shingles,
    confirmed with the exact Jaccard similarity of the shingle sets."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.exact: dict[str, str] = {}
        self.buckets: dict[tuple, list[int]] = {}
        self.sets: list[set] = []
        self.names: list[str] = []

    def check_and_add(self, text: str, name: str) -> tuple[str, str] | None:
        """None if new (and remembered), else (kind, name of the example it duplicates)."""
        key = hashlib.sha256(canonical(text).encode()).hexdigest()
        if key in self.exact:
            return "exact", self.exact[key]
        if self.threshold < 1.0:
            items = shingles(text)
            signature = minhash(items)
            rows = NUM_PERM // BANDS
            bands = [(b, tuple(signature[b * rows:(b + 1) * rows])) for b in range(BANDS)]
            candidates = {i for band in bands for i in self.buckets.get(band, [])}
            for i in sorted(candidates):
                if jaccard(items, self.sets[i]) >= self.threshold:
                    return "near", self.names[i]
            for band in bands:
                self.buckets.setdefault(band, []).append(len(self.sets))
            self.sets.append(items)
            self.names.append(name)
        self.exact[key] = name
        return None


def dedupe(files: list[str], out_dir: Path, threshold: float = 0.8, drop_empty: bool = True,
           min_tokens: int | None = None, max_tokens: int | None = None, tokenizer=None) -> dict:
    """Remove exact and near duplicates within and across files (an example that appears in an earlier file is
    dropped from the later one: list eval files first to keep them whole), empty answers and examples outside
    the token-length bounds. Writes OUT/<name>.jsonl per input and OUT/dedupe.json."""
    if (min_tokens or max_tokens) and tokenizer is None:
        raise UserError("--min-tokens/--max-tokens need a tokenizer: pass --tokenizer MODEL or --recipe RECIPE")
    index = DuplicateIndex(threshold)
    report = {}
    targets = [output_path(out_dir, path, files) for path in files]
    for path, target in zip(files, targets):
        raw, examples, _ = read_rows(path)
        counts = {"rows": len(raw), "unreadable": 0, "empty_answer": 0, "too_short": 0, "too_long": 0,
                  "exact_duplicate": 0, "near_duplicate": 0}
        lengths = token_lengths([e for e in examples if e is not None], tokenizer) if tokenizer else None
        length_of = iter(lengths or [])
        kept = []
        for number, (row, example) in enumerate(zip(raw, examples), start=1):
            if example is None:  # normalise refused it: an empty answer, or a row missing its fields
                empty = any(k in row and not str(row[k] or "").strip() for k in ANSWER_COLUMNS)
                counts["empty_answer" if empty and drop_empty else "unreadable"] += 1
                continue
            length = next(length_of) if lengths is not None else None
            if drop_empty and not answer_text(example).strip():
                counts["empty_answer"] += 1
                continue
            if min_tokens and length < min_tokens:
                counts["too_short"] += 1
                continue
            if max_tokens and length > max_tokens:
                counts["too_long"] += 1
                continue
            duplicate = index.check_and_add(example_text(example), f"{path}:{number}")
            if duplicate:
                counts[f"{duplicate[0]}_duplicate"] += 1
                continue
            kept.append(row)
        counts["kept"] = len(kept)
        columns = list(raw[0].keys()) if raw else []
        write_rows(target, kept, columns)
        report[path] = {**counts, "output": str(target)}
    write_atomic(out_dir / "dedupe.json", json.dumps(report, indent=2) + "\n")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Splits

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
