"""bench/recipe_latency.py times what it says: each command reports its own error (checked), side by side with the
baseline, and a --before that is no sft checkout is refused."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_recipe_latency_bench_reports_every_case(tmp_path):
    report = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "recipe_latency.py"), "--repeat", "1",
                           "--json", report], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert set(result["cases"]) == {"typo", "bad value", "bad override", "--help-all"}
    assert all(case["after_s"] > 0 for case in result["cases"].values()) and result["baseline_s"] > 0
    assert "after: typo" in proc.stdout and "x baseline" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "recipe_latency.py"), "--before", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: --before {tmp_path}: not an sft checkout (no sft/cli.py)"
