"""The suite's own scheduling: under pytest-xdist, the tests tests/conftest.py groups (multi-process modules, shared
trained runs) run on one worker. With pytest 9.2 and xdist 3.8 the group marks were silently ignored: two
multi-process tests ran at once on two workers and met on one rendezvous port."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_a_process_modules_tests_run_on_one_worker(tmp_path):
    record = ("import json, os, time, pytest\n"
              "@pytest.mark.parametrize('case', range(4))\n"
              "def test_case(case):\n"
              "    time.sleep(0.3)\n"
              "    with open(os.environ['WORKERS_FILE'], 'a') as f:\n"
              "        f.write(json.dumps([__name__, os.environ['PYTEST_XDIST_WORKER']]) + '\\n')\n")
    (tmp_path / "test_distributed.py").write_text(record)  # a name in conftest's PROCESS_MODULES
    (tmp_path / "test_plain.py").write_text(record)
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    workers = tmp_path / "workers.jsonl"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "WORKERS_FILE": str(workers), "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
                           "loadgroup", "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = [json.loads(line) for line in workers.read_text().splitlines()]
    grouped = {worker for module, worker in ran if module == "test_distributed"}
    assert len([1 for module, _ in ran if module == "test_distributed"]) == 4 and len(grouped) == 1, ran
