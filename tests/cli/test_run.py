"""End to end: a few real training steps per method, through `sft train` and `python sft/run.py`, then reload."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, write_recipe

ROWS = [{"instruction": f"Uppercase: {w}", "output": w.upper()} for w in
        ["cat", "dog", "bird", "fish", "lion", "bear", "wolf", "frog"]]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def train(entry, tmp_path, tiny_model, data_file, method, **extra):
    out = tmp_path / f"out-{method}"
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(data_file),
        output_dir=str(out), method=method, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to="none", seed=0, **extra,
    )
    proc = run_cli(entry, recipe, check=True)
    return out, proc


def base_weights(tiny_model):
    return load_file(str(tiny_model / "model.safetensors"))


def assert_common_outputs(out, proc):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    generation = GenerationConfig.from_pretrained(out)
    stops = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert stops[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # the token the model was trained to stop on
    assert "done: 3 steps" in proc.stderr and f"model saved to {out}" in proc.stderr
    assert (out / "recipe.yaml").is_file()


@pytest.mark.parametrize("entry", ["train", "run.py"])
def test_full_fine_tune_saves_trained_weights(entry, tmp_path, tiny_model, data_file):
    from transformers import AutoModelForCausalLM

    out, proc = train(entry, tmp_path, tiny_model, data_file, "full")
    assert_common_outputs(out, proc)
    saved = load_file(str(out / "model.safetensors"))
    before = base_weights(tiny_model)
    assert saved.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], saved[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "lm_head.weight" in changed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.state_dict()["lm_head.weight"], saved["lm_head.weight"])


@pytest.mark.parametrize("entry", ["train", "run.py"])
def test_lora_saves_a_trained_adapter_that_loads_onto_the_base(entry, tmp_path, tiny_model, data_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, proc = train(entry, tmp_path, tiny_model, data_file, "lora", lora_r=4, lora_alpha=8)
    assert_common_outputs(out, proc)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert len(lora_b) == 2 * 7  # all-linear: q,k,v,o,gate,up,down in each of 2 blocks
    assert all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: non-zero means trained
    assert not (out / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    some_key = next(iter(lora_b))
    match = [k for k in loaded if k.replace(".default", "") == some_key]
    assert match and torch.equal(loaded[match[0]], lora_b[some_key])


@pytest.mark.parametrize("entry", ["train", "run.py"])
def test_qlora_trains_an_adapter_on_a_4bit_base(entry, tmp_path, tiny_model, data_file):
    out, proc = train(entry, tmp_path, tiny_model, data_file, "qlora", lora_r=4, lora_alpha=8)
    assert_common_outputs(out, proc)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    resolved = (out / "recipe.yaml").read_text()
    assert "load_in_4bit: true" in resolved and "use_bnb_nested_quant: true" in resolved
    assert "base loaded in 4-bit NF4, double quantization, compute float32, storage float32" in proc.stderr
    # 4-bit weights count as their real element count, the same as in the unquantized base
    base = sum(v.numel() for v in load_file(str(tiny_model / "model.safetensors")).values())
    lora = sum(v.numel() for v in adapter.values())
    assert f"sft: trainable parameters: {lora:,} of {base + lora:,} ({100 * lora / (base + lora):.2f}%)" in proc.stderr


def test_lora_on_an_8bit_base(tmp_path, tiny_model, data_file):
    out, proc = train("run.py", tmp_path, tiny_model, data_file, "lora", load_in_8bit=True, lora_r=4, lora_alpha=8)
    assert_common_outputs(out, proc)
    assert "base loaded in 8-bit (LLM.int8)" in proc.stderr
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())


@pytest.mark.parametrize("entry", ["train", "run.py"])
def test_freeze_trains_only_the_last_block(entry, tmp_path, tiny_model, data_file):
    out, proc = train(entry, tmp_path, tiny_model, data_file, "freeze", trainable_layers=1,
                      trainable_modules=["^lm_head"])
    assert_common_outputs(out, proc)
    saved, before = load_file(str(out / "model.safetensors")), base_weights(tiny_model)
    for name in before:
        same = torch.equal(before[name], saved[name])
        trained = name.startswith("model.layers.1.") or name.startswith("lm_head")
        assert same != trained, name


def test_resumes_from_newest_checkpoint_and_fresh_starts_over(tmp_path, tiny_model, data_file):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(tiny_model), dataset_name=str(data_file),
        output_dir=str(out), max_steps=4, save_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, report_to="none", seed=0,
    )
    run_cli("train", recipe, check=True)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # A partial checkpoint (no trainer state: the save was interrupted) must never be resumed from.
    (out / "checkpoint-5").mkdir()
    proc = run_cli("train", recipe, "--max_steps", "6", check=True)
    assert f"resuming from {out / 'checkpoint-4'}" in proc.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6] and state["global_step"] == 6

    proc = run_cli("train", recipe, "--max_steps", "2", "--fresh", check=True)
    assert "resuming" not in proc.stderr and "done: 2 steps" in proc.stderr


def test_resolved_recipe_reproduces_the_run(tmp_path, tiny_model, data_file):
    first, _ = train("train", tmp_path, tiny_model, data_file, "full")
    second = tmp_path / "again"
    run_cli("train", first / "recipe.yaml", "--output_dir", second, check=True)
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
