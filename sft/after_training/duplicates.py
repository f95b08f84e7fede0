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
from sft.after_training.minhash import (
    NUM_PERM,
    BandIndex,
    band_keys,
    canonical,
    jaccard,
    minhash_setup,
    minhash_signatures,
    shingles,
)
from sft.errors import UserError
from sft.io import write_atomic

# A candidate whose MinHash estimate is this far below the threshold is not compared exactly: the estimate's
# standard deviation at Jaccard 0.8 is 0.035 (128 values), so a true near duplicate is this far below < 1 in 10^5.
MARGIN = 0.15
BLOCK = 8192  # rows hashed and looked up together: numpy's per-call cost spread over many rows


class Duplicate(NamedTuple):
    kind: str  # "exact" or "near"
    of: str  # the name of the earlier example it duplicates
    similarity: float  # Jaccard similarity of the shingle sets (1.0 for an exact duplicate)


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
