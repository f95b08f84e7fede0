"""Data curation before a run: rows read as training reads them, and token-length statistics (`sft data
stats`). Duplicates and filters: sft.after_training.duplicates; splits: sft.after_training.splits.

Inputs are read with sft.data (every format sft trains on) and never changed: results go to new JSONL files, each
written beside its target and moved into place when complete. Rows are written as they were read (only the
columns the file has), so the output trains exactly like the input."""

import json
from pathlib import Path

from sft.errors import UserError
from sft.io import percentiles, write_atomic, write_jsonl

# ---------------------------------------------------------------------------------------------------------------
# Reading


def file_rows(path: str, instruction_template: str = "chat") -> tuple[list, str]:
    """(rows, format) of one data file, read as training reads it (sft.data.rows.read_file): each row raw,
    normalised (None when it cannot be, so filters can count and drop it) and where it is ("file:line")."""
    from sft.data.rows import read_file

    if not Path(path).is_file():
        raise UserError(f"{path}: data file not found")
    data = read_file(path, instruction_template)
    return list(data.rows()), data.format


def read_rows(path: str, instruction_template: str = "chat") -> tuple[list[dict], list[dict], str]:
    """(raw rows, normalised rows, format) of one data file (see file_rows)."""
    rows, fmt = file_rows(path, instruction_template)
    return [row.raw for row in rows], [row.example for row in rows], fmt


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
