"""The batched near-duplicate index (sft.after_training.duplicates over sft.after_training.minhash) against
datasketch done row by row: the same signatures, and the same duplicates, each naming the same earlier row with the
same similarity."""

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from sft.after_training.duplicates import Duplicate, DuplicateIndex
from sft.after_training.minhash import (
    NUM_PERM,
    WEIGHTS,
    canonical,
    jaccard,
    minhash_setup,
    minhash_signatures,
    shingle_hash,
    shingles,
)

ODD_TEXTS = ["", "a", "abcd", "abcde", "Ünïcödé\u00a0spaces\u3000and\ttabs", "emoji 🙂🙂 and 𝄞 clef, again 🙂",
             "x" * 3000, "  leading and trailing  \n\n"]


def datasketch_minhash(text: str) -> MinHash:
    """The row-by-row way: one datasketch MinHash per row, fed the row's shingles."""
    minhash = MinHash(num_perm=NUM_PERM, seed=1, scheme="affine32", hashfunc=shingle_hash)
    minhash.update_batch(list(shingles(canonical(text))))
    return minhash


def test_batched_signatures_are_datasketchs():
    texts = [canonical(t) for t in ODD_TEXTS] + [f"row {i}: the same template, a different ending {i * i}"
                                                  for i in range(50)]
    permutations, _, _ = minhash_setup(0.8)
    batched = minhash_signatures(texts, permutations, chunk=64)  # many chunks, some splitting no text
    for text, signature in zip(texts, batched):
        assert np.array_equal(signature, datasketch_minhash(text).hashvalues), text


class RowByRow:
    """The straightforward reference: datasketch's MinHash and MinHashLSH one row at a time; every candidate
    compared exactly, no screen; the earliest of the most similar reported."""

    def __init__(self, threshold):
        self.threshold, self.exact, self.texts, self.names = threshold, {}, [], []
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=WEIGHTS)

    def check_and_add(self, text, name):
        text = canonical(text)
        if text in self.exact:
            return Duplicate("exact", self.exact[text], 1.0)
        minhash = datasketch_minhash(text)
        scores = {i: jaccard(shingles(text), shingles(self.texts[i])) for i in sorted(self.lsh.query(minhash))}
        best = max(scores, key=scores.get, default=None)
        if best is not None and scores[best] >= self.threshold:
            return Duplicate("near", self.names[best], scores[best])
        self.lsh.insert(len(self.texts), minhash)
        self.texts.append(text)
        self.names.append(name)
        self.exact[text] = name
        return None


def mixed_rows(seed=0):
    """Two files' rows: templated rows, edited copies (near duplicates), case and spacing variants (exact
    duplicates), copies of the first file's rows in the second, and unicode and odd whitespace."""
    rng = random.Random(seed)
    words = ["refund", "invoice", "naïve", "café", "licence", "DNS", "überprüfen", "日本語", "ключ", "quota",
             "timeout", "backup", "🙂", "renew", "settings", "card", "login", "token", "region", "mirror"]
    def row(i):
        return (f"system: You are the support assistant; cite the article.\nuser: ticket {i}: "
                f"{' '.join(rng.choices(words, k=rng.randint(4, 12)))}\nassistant: see article {i % 7}.")
    first = [row(i) for i in range(120)]
    for k in rng.sample(range(120), 15):  # near duplicates within the file
        words_of = first[k].split()
        words_of[rng.randrange(len(words_of))] = rng.choice(words)
        first.insert(rng.randint(k + 1, len(first)), " ".join(words_of))
    for k in rng.sample(range(120), 5):  # exact: case and spacing do not count
        first.append(first[k].upper().replace(" ", " \t\u00a0 "))
    first += ODD_TEXTS + ODD_TEXTS[4:6]
    second = [row(1000 + i) for i in range(60)] + [first[k] + " !" for k in range(0, 100, 9)] + first[:3]
    rng.shuffle(second)
    return [(f"a.jsonl:{i + 1}", t) for i, t in enumerate(first)] + [
        (f"b.jsonl:{i + 1}", t) for i, t in enumerate(second)]


@pytest.mark.parametrize("block_sizes", [[10**6], [1, 7, 50, 10**6]])
def test_batched_index_finds_what_row_by_row_finds(block_sizes):
    """Rows checked in one block, or in blocks of several sizes (a row's earlier rows then lie in its own block
    and in earlier ones): every duplicate, the row it names and its similarity as row by row."""
    rows = mixed_rows()
    reference = RowByRow(0.8)
    expected = [reference.check_and_add(text, name) for name, text in rows]
    index, found, start = DuplicateIndex(0.8), [], 0
    for size in block_sizes:
        block = rows[start:start + size]
        found += index.check_block([text for _, text in block], [name for name, _ in block])
        start += size
    assert found == expected
    kinds = [d.kind for d in expected if d]
    assert kinds.count("exact") >= 8 and kinds.count("near") >= 20  # the file plants both
    assert any(d and d.of.startswith("a.jsonl") and name.startswith("b.jsonl")
               for (name, _), d in zip(rows, expected))  # and duplicates across the files


def test_dedupe_counts_rows_on_its_progress_bar_and_pairs_rows_across_blocks(tmp_path):
    """9,000 rows are two blocks (8,192 and 808): on a terminal the bar counts rows, 91% after the first; a near
    and an exact copy of row 10 in the second block name row 10; with stderr not a terminal there is no bar."""
    import json

    from sft.after_training.duplicates import BLOCK
    from tests.conftest import run_cli_in_process

    rng = random.Random(1)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(3000)]
    rows = [{"instruction": f"Question {i}: {' '.join(rng.choices(vocabulary, k=12))}", "output": f"Answer {i}."}
            for i in range(8998)]
    near = dict(rows[9], instruction=rows[9]["instruction"] + " please")
    rows[8500:8500] = [near, dict(rows[9], output=" ANSWER  9. ")]
    assert len(rows) == 9000 > BLOCK
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    on_terminal = run_cli_in_process("data", "dedupe", data, "-o", tmp_path / "a",
                                     env={"TTY_COMPATIBLE": "1", "COLUMNS": "300"})  # what rich takes for a terminal
    assert on_terminal.returncode == 0, on_terminal.stderr
    progress = on_terminal.stderr.replace("\r", "\n")
    assert f"dedupe {data}" in progress and " 91%" in progress and "100%" in progress
    pairs = [json.loads(line) for line in (tmp_path / "a" / "duplicates.jsonl").read_text().splitlines()]
    assert [(p["row"], p["duplicate_of"], p["kind"]) for p in pairs] == [
        (f"{data}:8501", f"{data}:10", "near"), (f"{data}:8502", f"{data}:10", "exact")]
    assert "kept 8998 of 9000" in on_terminal.stdout
    captured = run_cli_in_process("data", "dedupe", data, "-o", tmp_path / "b")
    assert captured.returncode == 0, captured.stderr
    assert "dedupe" not in captured.stderr and "%" not in captured.stderr
