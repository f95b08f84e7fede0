"""Near-duplicate detection, measured side by side: sft's index (sft.after_training.duplicates, what `sft data
dedupe` runs: datasketch's banded MinHash LSH, candidates confirmed exactly) against the index it replaced
(bench/previous_dedupe.py: 32 bands of 4, quadratic on templated rows), on texts with planted near-duplicates.

    python bench/dedupe.py                      # 3,000 texts, 600 planted near-duplicates, threshold 0.8
    python bench/dedupe.py --shape templated --texts 6100 --planted 600   # short rows sharing one template
    python bench/dedupe.py --texts 200 --planted 40 --json out.json

A planted near-duplicate is an original with a few words replaced, dropped or added, kept only if the exact
Jaccard similarity of its 5-character shingle sets with the original is at least the threshold (so each one
is a true near-duplicate by the definition both methods approximate). Templated: every original is a few random
words inside one Alpaca-style prompt, as generated data is. Found: planted rows flagged. False positives: flagged
rows that are not planted (the originals' words are random: no two are alike). Seconds: wall time to index every
text once, one thread (and the CPU time it took, which is the wall time on an idle core); the last line prints
the previous index's time over sft's. The previous index is skipped above --previous-up-to texts (10,000): it
compares templated rows pairwise, ~2 minutes for 6,100 of them.

    python bench/dedupe.py --shape templated --texts 1000000 --planted 10000   # sft alone: minutes"""

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def shingles(text: str, size: int = 5) -> set[str]:
    """The text's 5-character shingles, case and spacing ignored: the ground truth, as plain Python sets."""
    text = " ".join(text.lower().split())
    return {text[i:i + size] for i in range(max(len(text) - size + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nAnswer the customer's question about {0}.\n\n### Response:\n{1}")


def corpus(texts: int, planted: int, threshold: float, seed: int, shape: str = "random") -> tuple[list[str], set[int]]:
    """(texts in a shuffled order, indices of the planted near-duplicates). Each duplicate comes after its
    original, as rows read in order would."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    if shape == "templated":
        originals = [TEMPLATE.format(" ".join(rng.choices(vocabulary, k=rng.randint(3, 6))),
                                     " ".join(rng.choices(vocabulary, k=rng.randint(12, 20))))
                     for _ in range(texts - planted)]
    else:
        originals = [" ".join(rng.choices(vocabulary, k=rng.randint(30, 70))) for _ in range(texts - planted)]
    duplicates = []
    while len(duplicates) < planted:
        source = rng.randrange(len(originals))
        words = originals[source].split()
        for _ in range(rng.randint(1, 4)):
            edit, at = rng.choice(("replace", "drop", "add")), rng.randrange(len(words))
            if edit == "replace":
                words[at] = rng.choice(vocabulary)
            elif edit == "drop" and len(words) > 1:
                del words[at]
            else:
                words.insert(at, rng.choice(vocabulary))
        text = " ".join(words)
        if text != originals[source] and jaccard(shingles(text), shingles(originals[source])) >= threshold:
            duplicates.append((source, text))
    # Originals in a shuffled order; each duplicate placed at a random position after its original: before the
    # original numbered `at` (or last), after the duplicates already placed there. One sort, so a million rows
    # take seconds.
    order = list(range(len(originals)))
    rng.shuffle(order)
    position = {i: k for k, i in enumerate(order)}
    placed = [((k, 1, 0), originals[i], False) for k, i in enumerate(order)]
    placed += [((rng.randint(position[source] + 1, len(order)), 0, n), text, True)
               for n, (source, text) in enumerate(duplicates)]
    placed.sort(key=lambda item: item[0])
    return [text for _, text, _ in placed], {k for k, (_, _, planted_row) in enumerate(placed) if planted_row}


def run_sft(texts: list[str], threshold: float) -> list[bool]:
    from sft.after_training.duplicates import DuplicateIndex

    found = DuplicateIndex(threshold).check_block(texts, [str(k) for k in range(len(texts))])
    return [duplicate is not None for duplicate in found]


def run_previous(texts: list[str], threshold: float) -> list[bool]:
    from bench.previous_dedupe import PreviousIndex

    index = PreviousIndex(threshold)
    return [index.check_and_add(text, str(k)) is not None for k, text in enumerate(texts)]


METHODS = {"sft": run_sft, "previous": run_previous}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000, help="Texts in all, planted ones included.")
    parser.add_argument("--planted", type=int, default=600, help="Near-duplicates among them.")
    parser.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity of 5-character shingles.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=["random", "templated"], default="random",
                        help="random: texts of random words; templated: short rows sharing one prompt template.")
    parser.add_argument("--methods", default="sft,previous", help="Comma-separated: sft, previous.")
    parser.add_argument("--previous-up-to", type=int, default=10000,
                        help="Skip the previous index above this many texts: it is quadratic on templated rows.")
    parser.add_argument("--json", default=None, help="Also write the results to this file.")
    options = parser.parse_args(argv)
    unknown = [m for m in options.methods.split(",") if m not in METHODS]
    if unknown or not 0 < options.planted < options.texts:
        message = (f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}" if unknown else
                   f"--planted {options.planted}: give fewer than --texts ({options.texts}) and more than 0")
        print(f"error: {message}", file=sys.stderr)
        return 2

    texts, planted = corpus(options.texts, options.planted, options.threshold, options.seed, options.shape)
    print(f"{len(texts)} {options.shape} texts, {len(planted)} planted near-duplicates (Jaccard >= "
          f"{options.threshold} of 5-character shingles)")
    results = []
    for name in options.methods.split(","):
        if name == "previous" and len(texts) > options.previous_up_to:
            print(f"{'previous':<11} skipped: {len(texts)} texts is above --previous-up-to "
                  f"{options.previous_up_to} (it compares templated rows pairwise)")
            continue
        start, start_cpu = time.perf_counter(), time.process_time()
        flagged = METHODS[name](texts, options.threshold)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        found = sum(1 for k in planted if flagged[k])
        false_positives = sum(1 for k, f in enumerate(flagged) if f and k not in planted)
        results.append({"method": name, "found": found, "planted": len(planted), "false_positives": false_positives,
                        "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
                        "rows_per_second": round(len(texts) / max(seconds, 1e-9))})
        print(f"{name:<11} found {found} of {len(planted)}, {false_positives} false positives, {seconds:.1f} s, "
              f"{len(texts) / max(seconds, 1e-9):,.0f} rows/s ({cpu_seconds:.1f} s of CPU)")
    seconds = {r["method"]: r["seconds"] for r in results}
    if {"sft", "previous"} <= seconds.keys():
        print(f"previous / sft time: {seconds['previous'] / max(seconds['sft'], 0.01):.1f}x")
    if options.json:
        summary = {"texts": len(texts), "shape": options.shape, "threshold": options.threshold, "results": results}
        Path(options.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
