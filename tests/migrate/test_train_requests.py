"""Values migrated configs carry that this machine or transformers cannot run: `sft train` falls back with a line
(tf32 without an Ampere GPU, as bf16 and flash attention do) or stops in one line before writing anything
(xformers attention, torchao's 8-bit AdamW without torchao)."""

import importlib.util
import json

import pytest
import yaml

from sft.capabilities import Fallback, Machine, decide
from tests.conftest import quickstart_rows, run_cli, write_recipe


def test_tf32_falls_back_without_an_ampere_gpu():
    note = ("tf32 needs an Ampere or newer NVIDIA GPU: turned off on this machine (float32 matmuls at full "
            "precision)")
    assert decide({"tf32": True}, Machine(on_gpu=False, installed=frozenset())) == [Fallback("tf32", False, note)]
    assert decide({"tf32": True}, Machine(on_gpu=True, installed=frozenset())) == [Fallback("tf32", False, note)]
    assert decide({"tf32": True}, Machine(on_gpu=True, installed=frozenset(), tf32=True)) == []
    assert decide({"tf32": False}, Machine(on_gpu=False, installed=frozenset())) == []


@pytest.mark.slow
def test_a_tf32_recipe_trains_on_this_cpu_machine(tiny_model, tmp_path):
    quickstart_rows(tmp_path / "train.jsonl", 16)
    write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                 output_dir="out", tf32=True, max_steps=1, per_device_train_batch_size=2, save_strategy="no",
                 report_to="none")
    proc = run_cli("train", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # TrainingArguments stopped it: "--tf32 requires Ampere..."
    assert "tf32 needs an Ampere or newer NVIDIA GPU: turned off on this machine" in proc.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # The resolved recipe asks for tf32 again, so a rerun on hardware that has it uses it.
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["tf32"] is True


REQUESTS = [
    ({"attn_implementation": "xformers"},
     "attn_implementation xformers is not an attention transformers has; set attn_implementation: sdpa (PyTorch's "
     "memory-efficient attention, what xformers provided)"),
]
if importlib.util.find_spec("torchao") is None:
    REQUESTS.append(({"optim": "adamw_torch_8bit"},
                     "optim adamw_torch_8bit needs torchao, which is not installed: pip install torchao, or set optim: "
                     "adamw_bnb_8bit (bitsandbytes' 8-bit AdamW)"))


@pytest.mark.parametrize("values, message", REQUESTS)
def test_a_request_transformers_cannot_run_stops_in_one_line_before_anything_is_written(tiny_model, tmp_path, values,
                                                                                         message):
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "héllo  "},
                                                                   {"role": "assistant", "content": "HÉLLO"}]}) + "\n")
    write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name="train.jsonl",
                 output_dir="out", **values)
    proc = run_cli("train", "recipe.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml", "train.jsonl"]
