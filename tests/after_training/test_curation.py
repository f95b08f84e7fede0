"""`sft data stats|dedupe|split`: token counts as training renders them, duplicates across files, filters,
deterministic splits; inputs never change."""

import hashlib
import json
import sys

import pytest

from sft.after_training.duplicates import DuplicateIndex
from tests.conftest import run_cli


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def qa(i, answer=None):
    return {"instruction": f"Question number {i}: what is {i} plus {i}?", "output": answer or f"It is {2 * i}."}


def test_near_duplicates_by_shingles():
    index = DuplicateIndex(threshold=0.8)
    assert index.check_and_add("The quick brown fox jumps over the lazy dog near the river bank.", "a") is None
    assert index.check_and_add("the quick  brown fox jumps over the lazy dog near the river bank.", "b") == (
        "exact", "a", 1.0)  # case and spacing do not count
    assert index.check_and_add("The quick brown fox jumps over the lazy dog near the river banks!", "c") == (
        "near", "a", 0.95)  # 57 of 60 distinct 5-character shingles in common
    assert index.check_and_add("A completely different sentence about training language models.", "d") is None


@pytest.fixture()
def files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [qa(i) for i in range(20)] + [
        qa(3),  # exact duplicate inside train
        {"instruction": "Question number 7: what is 7 plus 7 ?", "output": "It is 14."},  # near duplicate
        qa(100),  # also in eval
        {"instruction": "Say nothing", "output": "   "},  # empty answer
    ])
    eval_ = write_jsonl(tmp_path / "eval.jsonl", [qa(100), qa(101)])
    return train, eval_


def test_dedupe_across_files_and_filters(files, tmp_path, tiny_model):
    train, eval_ = files
    before = digest(train), digest(eval_)
    out = tmp_path / "clean"
    proc = run_cli("data", "dedupe", eval_, train, "-o", out, "--tokenizer", tiny_model, "--max-tokens", 200,
                   check=True)
    assert digest(train) == before[0] and digest(eval_) == before[1]  # inputs untouched
    report = json.loads((out / "dedupe.json").read_text())[str(train)]
    assert report["exact_duplicate"] == 2  # qa(3) again, and qa(100) already in eval
    assert report["near_duplicate"] == 1 and report["empty_answer"] == 1 and report["kept"] == 20
    kept = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert kept == [qa(i) for i in range(20)]  # rows written as they were read
    assert [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()] == [qa(100), qa(101)]
    assert "kept 20 of 24" in proc.stdout


SYSTEM = "You are Acme Cloud's support assistant. Cite the help-centre article; never promise refunds."
PRODUCTS = ["invoice", "seat licence", "storage quota", "SSO login", "API key", "backup", "DNS record", "VPN"]
SYMPTOMS = ["times out", "shows the wrong total", "is missing", "was charged twice", "returns 403", "is slow",
            "won't renew", "lost its settings", "rejects my card", "logs me out"]


def ticket(i, question=None):
    """A templated chat row: the system prompt and the answer's frame are shared by every row."""
    product, symptom, other = PRODUCTS[i % 8], SYMPTOMS[i % 10], SYMPTOMS[(i // 10 + 3) % 10]
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": question or f"Ticket #{i}: my {product} ({i * 7919}) "
                          f"{symptom} and {other} since {PRODUCTS[i // 80]} day {i % 13 + 2}."},
                         {"role": "assistant", "content": f"Thanks for ticket #{i}. Your {product} is fixed; see "
                          f"article 4.{i % 9}."}]}


def shingle_jaccard(a, b):
    """The ground truth, independently: Jaccard similarity of the 5-character shingles, case and spacing ignored."""
    def grams(example):
        text = " ".join("\n".join(f"{m['role']}: {m['content']}" for m in example["messages"]).lower().split())
        return {text[i:i + 5] for i in range(len(text) - 4)}
    return len(grams(a) & grams(b)) / len(grams(a) | grams(b))


def test_dedupe_writes_each_near_duplicate_with_the_row_it_matched(tmp_path):
    """Templated rows share most of their text (system prompt, answer frame) yet are not near duplicates of one
    another; an edited copy of row 41 (line 43: a blank line precedes it) is, and its pair names both lines."""
    rows = [ticket(i) for i in range(300)]
    copy = ticket(41, "TICKET #41 — my seat licence (324679) shows the wrong total and lost its settings since day 4!")
    lines = [json.dumps(r, ensure_ascii=False) for r in rows[:200]] + ["", json.dumps(copy)]
    lines += [json.dumps(r, ensure_ascii=False) for r in rows[200:]]
    data = tmp_path / "tickets.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "clean"
    proc = run_cli("data", "dedupe", data, "-o", out, check=True)
    assert "kept 300 of 301 (near duplicate 1)" in proc.stdout
    pairs = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    similarity = shingle_jaccard(copy, rows[41])
    assert 0.8 <= similarity < 1
    assert pairs == [{"row": f"{data}:202", "duplicate_of": f"{data}:42", "kind": "near",
                      "similarity": round(similarity, 4)}]
    for k in (0, 41, 299):  # unrelated rows, though they share the template, stay unpaired
        assert max(shingle_jaccard(rows[k], row) for row in rows if row is not rows[k]) < 0.8
    assert [json.loads(line) for line in (out / "tickets.jsonl").read_text().splitlines()] == rows


def test_length_bounds_need_a_tokenizer(files, tmp_path):
    train, _ = files
    proc = run_cli("data", "dedupe", train, "-o", tmp_path / "x", "--max-tokens", 10)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --min-tokens/--max-tokens need a tokenizer: pass --tokenizer MODEL or "
                                   "--recipe RECIPE")


def test_split_is_deterministic_and_disjoint(files, tmp_path):
    train, _ = files
    before = digest(train)
    run_cli("data", "split", train, "-o", tmp_path / "a", "--ratios", "80/10/10", "--seed", 3, check=True)
    run_cli("data", "split", train, "-o", tmp_path / "b", "--ratios", "80/10/10", "--seed", 3, check=True)
    assert digest(train) == before
    parts = {}
    for name in ("train", "validation", "test"):
        assert digest(tmp_path / "a" / f"{name}.jsonl") == digest(tmp_path / "b" / f"{name}.jsonl")
        parts[name] = (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines()
    assert [len(parts[n]) for n in ("train", "validation", "test")] == [18, 2, 3]  # 23 unique rows
    every = parts["train"] + parts["validation"] + parts["test"]
    assert len(set(every)) == len(every) == 23


def test_stats_with_the_runs_tokenizer(files, tmp_path, tiny_model):
    from transformers import AutoTokenizer

    _train, eval_ = files
    proc = run_cli("data", "stats", eval_, "--tokenizer", tiny_model, "-o", tmp_path / "s", "--json", check=True)
    report = json.loads(proc.stdout)[str(eval_)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                                  {"role": "assistant", "content": r["output"]}], tokenize=True,
                                                 return_dict=True)["input_ids"]) for r in (qa(100), qa(101))]
    assert report["rows"] == 2 and report["max"] == max(lengths) and report["tokens"] == sum(lengths)
    assert (tmp_path / "s" / "token_lengths.png").read_bytes()[:4] == b"\x89PNG"



@pytest.mark.parametrize("command, what", [(["split"], "split"), (["dedupe"], "deduped"),
                                           (["stats", "--tokenizer", "never-loaded"], "stats")])
def test_output_that_is_an_input_file_is_one_line_and_leaves_it_untouched(command, what, files, tmp_path):
    train, _ = files
    before = digest(train)
    result = run_cli("data", *command, train, "-o", train)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: -o {train}: is a file; -o names a folder for the {what} files (for example -o "
        f"{tmp_path / 'train'}.{what})"]
    assert digest(train) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "train.jsonl"]


def test_near_duplicates_without_datasketch_is_one_line_naming_the_install(monkeypatch):
    from sft.errors import UserError

    monkeypatch.setitem(sys.modules, "datasketch", None)  # what an environment without it imports
    with pytest.raises(UserError, match=r"^sft data dedupe needs datasketch for near duplicates: pip install "
                                        r"'datasketch>=2,<3' \(or pass --threshold 1.0"):
        DuplicateIndex(threshold=0.8)
    assert DuplicateIndex(threshold=1.0).check_and_add("a b", "x") is None  # exact-only needs no datasketch
