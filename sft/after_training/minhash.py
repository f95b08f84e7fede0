"""MinHash signatures and banded LSH tables for near-duplicate search, a block of rows at a time in numpy, with
datasketch's permutations (affine32 scheme) and its choice of bands: what `sft data dedupe`
(sft/after_training/duplicates.py) looks rows up in. Texts are compared as canonical text (case and spacing do not
count) cut into character shingles."""

from sft.errors import UserError

SHINGLE = 5  # characters per shingle
NUM_PERM = 128  # MinHash signature length
# datasketch picks the bands for the threshold, weighing a missed duplicate 500x a false candidate: candidates are
# screened and confirmed, so a false one costs a comparison. At 0.8: 21 bands of 6, a pair at 0.8 found 99.8% of
# the time.
WEIGHTS = (0.002, 0.998)
# A band bucket holding more rows than this (earlier blocks' kept rows and the block's earlier rows) is not looked
# up: on templated data one bucket per band gathers every row whose band fell wholly on the shared template (~3%
# of rows each), and comparing each row with all of them is quadratic. Such a band says nothing about a pair; a
# true near duplicate shares ~5 of its 21 bands, so it is still found through another. Measured on 60,000
# templated rows with 15,000 planted near duplicates: 7 missed, against 5 with no bucket skipped (13x slower).
CROWDED = 64
PAD = "\n"  # see shingle_hashes


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
