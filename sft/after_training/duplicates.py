"""Exact and near-duplicate removal across data files (`sft data dedupe`), with filters for empty answers and
length bounds. Near duplicates: banded MinHash LSH (datasketch) over character shingles, so each row is compared
only with the few rows that share a band, not with every earlier row; every candidate is confirmed by its exact
Jaccard similarity. Each duplicate and the row it matched are written to OUT/duplicates.jsonl.
bench/dedupe.py measures it against the previous index, which compared templated rows pairwise."""

import hashlib
import json
import zlib
from pathlib import Path
from typing import NamedTuple

from sft.after_training.curation import (
    ANSWER_COLUMNS,
    answer_text,
    example_text,
    file_rows,
    output_path,
    token_lengths,
    write_rows,
)
from sft.errors import UserError
from sft.io import write_atomic

SHINGLE = 5  # characters per shingle
NUM_PERM = 128  # MinHash signature length
# datasketch picks the bands for the threshold, weighing a missed duplicate 500x a false candidate: candidates are
# screened and confirmed, so a false one costs a comparison. At 0.8: 21 bands of 6, a pair at 0.8 found 99.8% of
# the time.
WEIGHTS = (0.002, 0.998)
# A candidate whose MinHash estimate is this far below the threshold is not compared exactly: the estimate's
# standard deviation at Jaccard 0.8 is 0.035 (128 values), so a true near duplicate is this far below < 1 in 10^5.
MARGIN = 0.15


class Duplicate(NamedTuple):
    kind: str  # "exact" or "near"
    of: str  # the name of the earlier example it duplicates
    similarity: float  # Jaccard similarity of the shingle sets (1.0 for an exact duplicate)


def canonical(text: str) -> str:
    """Case and spacing do not count."""
    return " ".join(text.lower().split())


def shingles(canonical_text: str, size: int = SHINGLE) -> set[bytes]:
    """The text's distinct `size`-character shingles (the whole text if it is shorter)."""
    text = canonical_text
    return {text[i:i + size].encode() for i in range(max(len(text) - size + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def minhash_lsh(threshold: float):
    """(an empty datasketch MinHashLSH index, the empty MinHash each signature starts as a copy of), or one line
    saying how to install datasketch. A new MinHash would draw its own permutations (0.5 ms); crc32 (C) hashes
    a shingle ~6x faster than datasketch's default sha1 (Python), and MinHash keeps 32 bits of either."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise UserError("sft data dedupe needs datasketch for near duplicates: pip install 'datasketch>=1.6,<3' "
                        "(or pass --threshold 1.0 to remove exact duplicates only)") from None
    return (MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=WEIGHTS),
            MinHash(num_perm=NUM_PERM, hashfunc=zlib.crc32))


class DuplicateIndex:
    """Exact duplicates by hash of the canonical text; near duplicates by MinHash LSH over character shingles.
    Rows sharing a template collide in some band often, so candidates are first screened by their MinHash
    estimate (one vectorised comparison), and those that pass are confirmed with the exact Jaccard similarity of
    the shingle sets, recomputed from the kept canonical text (every row's shingle set would take ~50x the memory)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.exact: dict[str, str] = {}
        self.lsh, self.empty = minhash_lsh(threshold) if threshold < 1.0 else (None, None)
        self.texts: list[str] = []  # canonical text of each row in the LSH index, by its key there
        self.signatures: list = []  # and its MinHash values
        self.names: list[str] = []

    def check_and_add(self, text: str, name: str) -> Duplicate | None:
        """None if new (and remembered), else the Duplicate it is; the most similar earlier row if several."""
        text = canonical(text)
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self.exact:
            return Duplicate("exact", self.exact[key], 1.0)
        if self.lsh is not None:
            items = shingles(text)
            signature = self.empty.copy()
            signature.update_batch(list(items))
            scores = {i: jaccard(items, shingles(self.texts[i])) for i in self.likely(signature)}
            best = max(scores, key=scores.get, default=None)  # the earliest of the most similar
            if best is not None and scores[best] >= self.threshold:
                return Duplicate("near", self.names[best], scores[best])
            self.lsh.insert(len(self.texts), signature, check_duplication=False)
            self.texts.append(text)
            self.signatures.append(signature.hashvalues)
            self.names.append(name)
        self.exact[key] = name
        return None

    def likely(self, signature) -> list[int]:
        """The LSH candidates, in the order they were added, whose MinHash estimate is within MARGIN of the
        threshold."""
        import numpy as np

        candidates = sorted(self.lsh.query(signature))
        if not candidates:
            return []
        estimates = (np.stack([self.signatures[i] for i in candidates]) == signature.hashvalues).mean(axis=1)
        return [i for i, estimate in zip(candidates, estimates) if estimate >= self.threshold - MARGIN]


def progress(rows, description: str):
    """A progress bar on stderr when it is a terminal; the rows unchanged otherwise."""
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    return track(rows, description=description, console=console, disable=not console.is_terminal)


def dedupe(files: list[str], out_dir: Path, threshold: float = 0.8, drop_empty: bool = True,
           min_tokens: int | None = None, max_tokens: int | None = None, tokenizer=None) -> dict:
    """Remove exact and near duplicates within and across files (an example that appears in an earlier file is
    dropped from the later one: list eval files first to keep them whole), empty answers and examples outside
    the token-length bounds. Writes OUT/<name>.jsonl per input,
    OUT/duplicates.jsonl (each duplicate, the row it matched and their similarity) and OUT/dedupe.json."""
    if (min_tokens or max_tokens) and tokenizer is None:
        raise UserError("--min-tokens/--max-tokens need a tokenizer: pass --tokenizer MODEL or --recipe RECIPE")
    index = DuplicateIndex(threshold)
    report, pairs = {}, []
    targets = [output_path(out_dir, path, files) for path in files]
    for path, target in zip(files, targets):
        rows, _ = file_rows(path)
        raw = [row.raw for row in rows]
        counts = {"rows": len(raw), "unreadable": 0, "empty_answer": 0, "too_short": 0, "too_long": 0,
                  "exact_duplicate": 0, "near_duplicate": 0}
        lengths = token_lengths([r.example for r in rows if r.example is not None], tokenizer) if tokenizer else None
        length_of = iter(lengths or [])
        kept = []
        for item in progress(rows, f"dedupe {path}"):
            row, example, where = item.raw, item.example, item.where
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
            duplicate = index.check_and_add(example_text(example), where)
            if duplicate:
                counts[f"{duplicate.kind}_duplicate"] += 1
                pairs.append({"row": where, "duplicate_of": duplicate.of, "kind": duplicate.kind,
                              "similarity": round(duplicate.similarity, 4)})
                continue
            kept.append(row)
        counts["kept"] = len(kept)
        columns = list(raw[0].keys()) if raw else []
        write_rows(target, kept, columns)
        report[path] = {**counts, "output": str(target)}
    write_atomic(out_dir / "duplicates.jsonl", "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    write_atomic(out_dir / "dedupe.json", json.dumps(report, indent=2) + "\n")
    return report
