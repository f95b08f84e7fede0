"""The near-duplicate index `sft data dedupe` used before datasketch's MinHashLSH, kept only as bench/dedupe.py's
baseline: MinHash over character shingles with 32 bands of 4 rows (candidates from Jaccard ~0.4), each
candidate confirmed by exact Jaccard. On templated data nearly every earlier row is a candidate: quadratic."""

import hashlib
from functools import lru_cache

from sft.after_training.minhash import canonical

SHINGLE = 5  # characters per shingle
NUM_PERM = 128  # MinHash signature length
BANDS = 32  # LSH bands of NUM_PERM // BANDS rows: candidates at Jaccard ~0.5 and above are compared exactly


def shingle_hashes(text: str, size: int = SHINGLE):
    """Sorted distinct 64-bit hashes of the canonical text's `size`-character shingles (the whole text if it is
    shorter), computed for all shingles at once: a polynomial over the characters' code points, then
    splitmix64's finaliser to spread the bits."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    codes = np.frombuffer(canonical(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    windows = sliding_window_view(codes, min(size, codes.size)) if codes.size else np.zeros((1, 0), np.uint64)
    hashes = np.zeros(len(windows), dtype=np.uint64)
    for column in windows.T:  # uint64 arithmetic wraps around: that is the hash
        hashes = hashes * np.uint64(0x100000001B3) + column
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        hashes = (hashes ^ (hashes >> np.uint64(shift))) * np.uint64(factor)
    return np.unique(hashes ^ (hashes >> np.uint64(31)))


@lru_cache(maxsize=1)
def hash_functions(seed: int = 0):
    """NUM_PERM multiply-shift hash functions (a * h + b) >> 32 over 64-bit words, a odd: universal, and no
    modulo to compute."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return a[:, None], rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)[:, None]


def minhash(items, chunk: int = 8192):
    """MinHash signature of a hash array: for each hash function, the least value over the items (in chunks, so
    a long text needs NUM_PERM x chunk words of memory at most)."""
    import numpy as np

    a, b = hash_functions()
    return np.minimum.reduce([((a * items[None, start:start + chunk] + b) >> np.uint64(32)).min(axis=1)
                              for start in range(0, items.size, chunk)])


def jaccard(a, b) -> float:
    """Exact Jaccard similarity of two sorted distinct hash arrays."""
    import numpy as np

    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


class PreviousIndex:
    """Exact duplicates by hash of the canonical text; near duplicates by MinHash LSH over character shingles,
    confirmed with the exact Jaccard similarity of the shingle sets."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.exact: dict[str, str] = {}
        self.buckets: dict[bytes, list[int]] = {}
        self.sets: list = []
        self.names: list[str] = []

    def check_and_add(self, text: str, name: str) -> tuple[str, str] | None:
        """None if new (and remembered), else (kind, name of the example it duplicates)."""
        key = hashlib.sha256(canonical(text).encode()).hexdigest()
        if key in self.exact:
            return "exact", self.exact[key]
        if self.threshold < 1.0:
            items = shingle_hashes(text)
            signature = minhash(items).reshape(BANDS, -1)
            bands = [band.tobytes() + bytes([number]) for number, band in enumerate(signature)]
            candidates = {i for band in bands for i in self.buckets.get(band, ())}
            for i in sorted(candidates):
                if jaccard(items, self.sets[i]) >= self.threshold:
                    return "near", self.names[i]
            for band in bands:
                self.buckets.setdefault(band, []).append(len(self.sets))
            self.sets.append(items)
            self.names.append(name)
        self.exact[key] = name
        return None


