"""Under `accelerate launch --num_processes 2` (2 CPU processes over gloo) the data is prepared once per node: the
local main process prepares it, the other rank reads its result. Each rank measures the CPU time preparation took
in its own process; both together take at most 1.3x what one process alone takes, and both get the same tokens
as the one-process run."""

import json
import random
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_recipe

pytestmark = pytest.mark.slow  # two launches of real processes: about 30 s

CONVERSATIONS = 4000
WORDS = "the model learns to answer questions about data while users ask for help with code and plans".split()


def conversations(n: int):
    rng = random.Random(0)
    say = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))  # noqa: E731
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": say()}, {"role": "assistant", "content": say()}]
        yield {"messages": messages}


def run(cmd, out):
    out.mkdir()
    proc = subprocess.run([*cmd, str(out)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank*.json"))}


def test_two_ranks_prepare_the_data_once(tmp_path, tiny_model):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversations(CONVERSATIONS)))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_model), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"), data_cache=False)
    worker = ["tests/support/prepare_worker.py", str(recipe)]
    alone = run([sys.executable, *worker], tmp_path / "one")
    both = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                "accelerate_configs/multi_gpu.yaml", "--num_processes", "2", "--mixed_precision", "no", *worker],
               tmp_path / "two")

    assert sorted(both) == [0, 1]
    assert alone[0]["examples"] == CONVERSATIONS
    assert {r["tokens_sha256"] for r in both.values()} == {alone[0]["tokens_sha256"]}
    total = both[0]["cpu_seconds"] + both[1]["cpu_seconds"]
    assert total <= 1.3 * alone[0]["cpu_seconds"], (both, alone)
    assert both[1]["cpu_seconds"] < 0.2 * both[0]["cpu_seconds"], both  # rank 1 read what rank 0 prepared
