"""bench/dedupe.py counts what it plants: a tiny dry run of sft's index and the one it replaced, same texts."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_dedupe_bench_counts_planted_near_duplicates(tmp_path):
    """A tiny dry run: both methods index the same texts; found, planted and false positives are counts over
    the planted rows, and sft finds every one, as the index it replaced does."""
    report = tmp_path / "dedupe.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "dedupe.py"), "--texts", "120", "--planted", "30",
                           "--json", report], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["texts"] == 120 and [r["method"] for r in result["results"]] == ["sft", "previous"]
    for r in result["results"]:
        assert (r["planted"], r["found"], r["false_positives"]) == (30, 30, 0)
    assert "previous / sft time: " in proc.stdout
    for r in result["results"]:
        assert f"{r['method']:<11} found {r['found']} of 30, {r['false_positives']} false positives" in proc.stdout
        assert r["rows_per_second"] > 0
    skipped = subprocess.run([sys.executable, str(REPO / "bench" / "dedupe.py"), "--texts", "120", "--planted", "30",
                              "--previous-up-to", "100"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             check=False)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "previous    skipped: 120 texts is above --previous-up-to 100" in skipped.stdout
    assert "sft         found 30 of 30, 0 false positives" in skipped.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "dedupe.py"), "--methods", "sft,minhash"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --methods: unknown minhash; choose from sft, previous"
