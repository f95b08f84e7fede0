"""What the trainer receives from the data stage, and what `sft check` reports of it."""

from dataclasses import dataclass

from sft.data.split import decoded


@dataclass
class PreparedData:
    """What the trainer receives (train/eval: input_ids and labels), and what `sft check` reports."""

    train: object
    eval: object
    stats: dict
    problems: list
    notes: list
    train_full: object = None  # with per-example columns (where, length, trained, ...) for preview and check
    eval_examples: object = None  # the eval split before tokenizing (JSON examples)

    @property
    def eval_rows(self):
        """The eval split as normalised rows (dicts), or None: what generation samples and metrics read."""
        if self.eval_examples is None or len(self.eval_examples) == 0:
            return None
        return decoded(self.eval_examples)

    def summary(self) -> str:
        s = self.stats
        share = s["trained_tokens"] / max(s["tokens"], 1)
        formats = ", ".join(sorted({src["format"] for src in s["sources"]}))
        eval_part = f"; eval split {s['eval_examples']} examples" if s.get("eval_examples") else ""
        dupes = f", {s['duplicates_removed']} exact duplicates removed" if s.get("duplicates_removed") else ""
        return (f"data: {s['kept']} examples ({formats}, loss on {s['loss_mode']}), {s['tokens']:,} tokens, "
                f"{share:.0%} trained; {s['dropped_truncated']} dropped (all trained tokens past max_length), "
                f"{s['truncated']} truncated, {s['skipped_bad']} bad rows skipped{dupes}{eval_part}; tokenized data "
                + {"hit": "reused from the cache", "miss": "cached", "off": "not cached"}[s["cache"]])
