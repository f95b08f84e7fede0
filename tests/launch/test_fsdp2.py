"""torch's FSDP2 (`fully_shard`) on sft's tiny Llama, on CPU over gloo, without accelerate (which runs FSDP on GPUs
only, so sft refuses FSDP profiles on CPU): what the fsdp2 and fsdp2_qlora profiles rest on. Two ranks, each
holding half of every weight (the 4-bit base too, stored as float32), train one step on half the batch: the mean
of their losses equals one unsharded process's loss on the whole batch, and the trained weights gathered whole
equal that process's after its step."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "support" / "fsdp2_worker.py"


def fully_sharded_step(model, out, method, processes):
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(WORKER), str(model), str(out), method]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import torch

    return json.loads((out / "result.json").read_text()), torch.load(out / "weights.pt")


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_fully_shard_over_gloo_equals_one_unsharded_process(method, tiny_model, tmp_path):
    import torch

    one, one_weights = fully_sharded_step(tiny_model, tmp_path / "one", method, processes=1)
    two, two_weights = fully_sharded_step(tiny_model, tmp_path / "two", method, processes=2)
    assert two["world"] == 2 and len(two["losses"]) == 2 and two["losses"][0] != two["losses"][1]
    # Sharded: each rank holds half of every weight's rows (a 4-bit weight: half of its packed storage).
    for name, shape in one["shards"].items():
        assert two["shards"][name][0] == (shape[0] + 1) // 2, name
    if method == "qlora":
        packed = [n for n in one["shards"] if n.endswith("q_proj.base_layer.weight")]
        assert packed and all(one["shards"][n][1] == 1 for n in packed)  # NF4 packed into float32 storage
    assert sum(two["losses"]) / 2 == pytest.approx(one["losses"][0], rel=1e-5)
    assert set(two_weights) == set(one_weights) and len(one_weights) == (21 if method == "full" else 28)
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, rtol=0, atol=1e-5)
