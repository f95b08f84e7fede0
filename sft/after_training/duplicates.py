"""Exact and near-duplicate removal across data files (`sft data dedupe`), with filters for empty answers and
length bounds. Near duplicates: banded MinHash LSH (datasketch) over character shingles, so each row is compared
only with the few rows that share a band, not with every earlier row; every candidate is confirmed by its exact
Jaccard similarity. Rows are hashed and looked up a block at a time in numpy, with datasketch's permutations and
band layout, so a million rows take minutes. Each duplicate and the row it matched are written to
OUT/duplicates.jsonl. bench/dedupe.py measures it against the previous index, which compared templated rows
pairwise."""

import hashlib
import json
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
BLOCK = 8192  # rows hashed and looked up together: numpy's per-call cost spread over many rows
# A band bucket holding more rows than this (earlier blocks' kept rows and the block's earlier rows) is not looked
# up: on templated data one bucket per band gathers every row whose band fell wholly on the shared template (~3%
# of rows each), and comparing each row with all of them is quadratic. Such a band says nothing about a pair; a
# true near duplicate shares ~5 of its 21 bands, so it is still found through another. Measured on 60,000
# templated rows with 15,000 planted near duplicates: 7 missed, against 5 with no bucket skipped (15x slower).
CROWDED = 64
PAD = "\n"  # see shingle_hashes


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


def shingle_hashes(canonical_texts: list[str], size: int = SHINGLE):
    """(32-bit hashes of each text's `size`-character shingles, all texts' in one array; offsets: text k's are
    hashes[offsets[k]:offsets[k + 1]]). A text shorter than `size` is one shingle. All at once in numpy: a
    polynomial over the code points of every window of the texts joined, then splitmix64's finaliser to spread
    the bits, for the windows that are shingles; a repeated shingle is hashed again, which a minimum does not
    mind."""
    import numpy as np

    # A newline after each text pads one shorter than a shingle: canonical text has none, so a padded window
    # matches no shingle of a longer text.
    joined = "".join(text + PAD * size for text in canonical_texts)
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    windows = len(codes) - size + 1
    hashes = codes[:windows].copy()
    for k in range(1, size):  # uint64 arithmetic wraps around: that is the hash
        hashes *= np.uint64(0x100000001B3)
        hashes += codes[k:k + windows]
    lengths = np.fromiter(map(len, canonical_texts), dtype=np.int64, count=len(canonical_texts))
    counts = np.maximum(lengths - size + 1, 1)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    starts = np.concatenate(([0], np.cumsum(lengths + size)[:-1]))
    hashes = hashes[np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], counts)]  # the shingles' windows
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        hashes = (hashes ^ (hashes >> np.uint64(shift))) * np.uint64(factor)
    hashes ^= hashes >> np.uint64(31)
    return (hashes >> np.uint64(32)).astype(np.uint32), offsets


def shingle_hash(shingle: bytes) -> int:
    """The hash shingle_hashes gives one shingle (utf-8 bytes, as datasketch's update_batch passes them): the
    hash function of a datasketch MinHash that matches minhash_signatures."""
    hashes, _ = shingle_hashes([shingle.decode()])
    return int(hashes[0])


def fmix32(values):
    """MurmurHash3's 32-bit finaliser, which datasketch's affine32 scheme applies to each hash first."""
    import numpy as np

    for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        values = (values ^ (values >> np.uint32(shift))) * np.uint32(factor)
    return values ^ (values >> np.uint32(16))


def minhash_signatures(canonical_texts: list[str], permutations, chunk: int = 4096):
    """Each text's MinHash signature (a row of NUM_PERM uint32 values) as datasketch's MinHash (affine32 scheme)
    computes it from shingle_hash: per permutation, the least a * fmix32(h) + b mod 2^32 over the text's
    shingles. Computed for all shingles of a few hundred texts at a time, permutations along the first axis, so
    each numpy call runs over ~2 million values; that is what makes a million rows take minutes, not an hour."""
    import numpy as np

    hashes, offsets = shingle_hashes(canonical_texts)
    hashes = fmix32(hashes)
    a, b = (p[:, None] for p in permutations)
    signatures = np.empty((len(canonical_texts), len(a)), dtype=np.uint32)
    first = 0
    while first < len(canonical_texts):
        # texts whose shingles fill about one chunk (at least one text)
        last = max(int(np.searchsorted(offsets, offsets[first] + chunk, side="right")) - 1, first + 1)
        start, end = offsets[first], offsets[last]
        values = a * hashes[start:end]
        values += b
        signatures[first:last] = np.minimum.reduceat(values, offsets[first:last] - start, axis=1).T
        first = last
    return signatures


def band_keys(signatures, bands: int, rows: int):
    """One 64-bit key per row and band: a hash of the band's `rows` signature values. Two rows share a key iff
    they agree on the band, but for a 64-bit collision, which the screen after it catches."""
    import numpy as np

    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    for k in range(rows):
        keys = keys * np.uint64(0x100000001B3) + signatures[:, k:bands * rows:rows].astype(np.uint64)
    keys += np.arange(bands, dtype=np.uint64)
    return (keys ^ (keys >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)


def minhash_setup(threshold: float):
    """(datasketch's permutations, bands, rows per band) for the threshold, or one line saying how to install
    datasketch. Its MinHashLSH picks the bands; its MinHash, the permutations."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise UserError("sft data dedupe needs datasketch for near duplicates: pip install 'datasketch>=2,<3' "
                        "(or pass --threshold 1.0 to remove exact duplicates only)") from None
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=WEIGHTS)
    return MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32").permutations, lsh.b, lsh.r


def pairs_in_runs(starts, counts, ids):
    """(query, id) for each query k and each id in ids[starts[k]:starts[k] + counts[k]]."""
    import numpy as np

    ends = np.cumsum(counts)
    queries = np.repeat(np.arange(len(counts)), counts)
    return queries, ids[np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - counts), counts)]


def unique_pairs(queries: list, found: list):
    """The (query, id) pairs once each, ordered by query then id."""
    import numpy as np

    queries, found = np.concatenate(queries), np.concatenate(found)
    width = int(found.max()) + 1 if found.size else 1
    pairs = np.unique(queries * width + found)
    return pairs // width, pairs % width


class BandIndex:
    """The banded LSH tables of the rows kept so far: per band, the keys sorted, with their rows' numbers.
    Sorted numpy arrays rather than a dict of sets: a block of rows is looked up in one searchsorted per band,
    and a million rows x 21 bands fit in 250 MB."""

    def __init__(self, bands: int):
        import numpy as np

        self.keys = [np.empty(0, dtype=np.uint64) for _ in range(bands)]
        self.ids = [np.empty(0, dtype=np.int64) for _ in range(bands)]

    def candidate_pairs(self, keys):
        """The pairs that share a band whose bucket is not crowded: (block row, indexed row) with the rows
        indexed before this block, and (block row, earlier block row) within it; each pair once, ordered.
        A bucket's size, for a row, counts the indexed rows and the block's earlier rows in it."""
        import numpy as np

        rows = np.arange(len(keys))
        indexed, within = ([], []), ([], [])
        for band, (sorted_keys, ids) in enumerate(zip(self.keys, self.ids)):
            left = np.searchsorted(sorted_keys, keys[:, band], side="left")
            indexed_count = np.searchsorted(sorted_keys, keys[:, band], side="right") - left
            order = np.argsort(keys[:, band], kind="stable")  # rows with one key together, in row order
            in_order = keys[order, band]
            run_start = np.maximum.accumulate(np.where(np.r_[True, in_order[1:] != in_order[:-1]], rows, 0))
            earlier_count, earlier_start = np.empty_like(rows), np.empty_like(rows)
            earlier_count[order], earlier_start[order] = rows - run_start, run_start
            uncrowded = indexed_count + earlier_count <= CROWDED
            for pairs, runs in ((indexed, (left, indexed_count, ids)), (within, (earlier_start, earlier_count, order))):
                start, count, run_ids = runs
                query, found = pairs_in_runs(start, np.where(uncrowded, count, 0), run_ids)
                pairs[0].append(query)
                pairs[1].append(found)
        return unique_pairs(*indexed), unique_pairs(*within)

    def add(self, keys, ids):
        """Index rows `ids` under their band keys (merged into the sorted arrays: one pass per band)."""
        import numpy as np

        for band in range(len(self.keys)):
            order = np.argsort(keys[:, band], kind="stable")
            new_keys = keys[order, band]
            at = np.searchsorted(self.keys[band], new_keys, side="right")
            self.keys[band] = np.insert(self.keys[band], at, new_keys)
            self.ids[band] = np.insert(self.ids[band], at, ids[order])


class DuplicateIndex:
    """Exact duplicates by hash of the canonical text; near duplicates by MinHash LSH over character shingles.
    Rows are taken a block at a time: their signatures and band keys computed together in numpy, and their
    candidates among earlier blocks' rows found and screened together; then each row in order is compared with
    those and with the earlier kept rows of its own block, so a row is only ever compared with earlier kept rows.
    Candidates are screened by their MinHash estimate, and those that pass are confirmed with the exact Jaccard
    similarity of the shingle sets, recomputed from the kept canonical text (every row's shingle set would take
    ~50x the memory)."""

    def __init__(self, threshold: float):
        import numpy as np

        self.threshold = threshold
        self.exact: dict[bytes, str] = {}
        self.near = threshold < 1.0
        if self.near:
            self.permutations, self.bands, self.rows = minhash_setup(threshold)
            self.band_index = BandIndex(self.bands)
        self.texts: list[str] = []  # canonical text of each row in the LSH index, by its number there
        self.names: list[str] = []
        self.stored = np.empty((0, NUM_PERM), dtype=np.uint32)  # and its signature; grown by doubling

    def check_and_add(self, text: str, name: str) -> Duplicate | None:
        """None if new (and remembered), else the Duplicate it is; the most similar earlier row if several."""
        return self.check_block([text], [name])[0]

    def check_block(self, texts: list[str], names: list[str]) -> list[Duplicate | None]:
        """check_and_add for each text in order, BLOCK rows at a time."""
        results = []
        for start in range(0, len(texts), BLOCK):
            results += self.check_one_block(texts[start:start + BLOCK], names[start:start + BLOCK])
        return results

    def check_one_block(self, texts: list[str], names: list[str]) -> list[Duplicate | None]:
        import numpy as np

        texts = [canonical(text) for text in texts]
        if self.near:
            signatures = minhash_signatures(texts, self.permutations)
            keys = band_keys(signatures, self.bands, self.rows)
            indexed_pairs, block_pairs = self.band_index.candidate_pairs(keys)
            earlier = self.screened(signatures, self.stored, *indexed_pairs)
            within = self.screened(signatures, signatures, *block_pairs)  # kept or not: known in the loop below
            first = len(self.texts)  # this block's kept rows are numbered from here
            number = [-1] * len(texts)  # each kept row's number
            kept = []
        results = []
        for row, (text, name) in enumerate(zip(texts, names)):
            digest = hashlib.sha256(text.encode()).digest()
            if digest in self.exact:
                results.append(Duplicate("exact", self.exact[digest], 1.0))
                continue
            if self.near:
                candidates = earlier.get(row, []) + [number[i] for i in within.get(row, ()) if number[i] >= 0]
                duplicate = self.most_similar(text, candidates)
                if duplicate:
                    results.append(duplicate)
                    continue
                number[row] = first + len(kept)
                kept.append(row)
                self.texts.append(text)
                self.names.append(name)
            results.append(None)
            self.exact[digest] = name
        if self.near and kept:
            self.store(signatures[kept], first)
            self.band_index.add(keys[kept], np.arange(first, first + len(kept)))
        return results

    def store(self, signatures, first: int) -> None:
        import numpy as np

        if len(self.stored) < first + len(signatures):
            grown = np.empty((max(2 * len(self.stored), first + len(signatures)), NUM_PERM), dtype=np.uint32)
            grown[:first] = self.stored[:first]
            self.stored = grown
        self.stored[first:first + len(signatures)] = signatures

    def screen(self, signature, others):
        """Whether each of `others` has a MinHash estimate within MARGIN of the threshold."""
        return (others == signature).mean(axis=1) >= self.threshold - MARGIN

    def screened(self, signatures, others, queries, found, chunk: int = 65536) -> dict[int, list[int]]:
        """{query: its found rows, in order, whose MinHash estimate passes the screen} for pairs (queries[k],
        found[k]) of rows of `signatures` and of `others`."""
        import numpy as np

        passed = np.concatenate([self.screen(signatures[queries[s:s + chunk]], others[found[s:s + chunk]])
                                 for s in range(0, len(queries), chunk)] or [np.empty(0, dtype=bool)])
        result: dict[int, list[int]] = {}
        for query, other in zip(queries[passed].tolist(), found[passed].tolist()):
            result.setdefault(query, []).append(other)
        return result

    def most_similar(self, text: str, candidates: list[int]) -> Duplicate | None:
        """The earliest of the most similar candidates, if its exact Jaccard similarity reaches the threshold."""
        if not candidates:
            return None
        items = shingles(text)
        scores = {i: jaccard(items, shingles(self.texts[i])) for i in candidates}
        best = max(scores, key=scores.get)
        return Duplicate("near", self.names[best], scores[best]) if scores[best] >= self.threshold else None


def progress_bar(description: str, total: int):
    """A progress bar on stderr when it is a terminal (disabled otherwise), counting rows: advance it by each
    block's rows, with refresh=True. It is drawn then, not by a timer: a block takes well under a second, and
    each one shows."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    bar = Progress(console=console, auto_refresh=False, disable=not console.is_terminal)
    return bar, bar.add_task(description, total=total)


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
        eligible = []  # rows that pass the filters, checked for duplicates in order
        for item in rows:
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
            eligible.append((row, example_text(example), where))
        kept = []
        bar, task = progress_bar(f"dedupe {path}", len(eligible))
        with bar:
            for start in range(0, len(eligible), BLOCK):
                block = eligible[start:start + BLOCK]
                found = index.check_block([text for _, text, _ in block], [where for _, _, where in block])
                for (row, _, where), duplicate in zip(block, found):
                    if duplicate:
                        counts[f"{duplicate.kind}_duplicate"] += 1
                        pairs.append({"row": where, "duplicate_of": duplicate.of, "kind": duplicate.kind,
                                      "similarity": round(duplicate.similarity, 4)})
                    else:
                        kept.append(row)
                bar.update(task, advance=len(block), refresh=True)
        counts["kept"] = len(kept)
        columns = list(raw[0].keys()) if raw else []
        write_rows(target, kept, columns)
        report[path] = {**counts, "output": str(target)}
    write_atomic(out_dir / "duplicates.jsonl", "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    write_atomic(out_dir / "dedupe.json", json.dumps(report, indent=2) + "\n")
    return report
