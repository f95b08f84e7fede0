"""`sft merge`: the merged model computes what the adapter computed, stands alone with the run's tokenizer,
template and stop token, exports to 4-bit NF4, and refuses a base the adapter was not trained on."""

import json

import pytest

from tests.conftest import HUB_TOKEN, quickstart_rows, run_cli


# Merging adds B·A into W in float32: the logits may differ from W·x + B·(A·x) only by float rounding.
LOGITS_TOLERANCE = 1e-4


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]




@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory, hub):
    out = tmp_path_factory.mktemp("merge") / "merged"
    proc = run_cli("merge", lora_run, "-o", out, "--dtype", "float32", "--push", "tester/merged", env=hub.env,
                   check=True)
    assert f"merged {lora_run} into" in proc.stdout and "pushed" in proc.stdout
    return out


def test_merged_logits_equal_the_adapter_models(lora_run, tiny_model, merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Uppercase: merge me"}], tokenize=False,
                                         add_generation_prompt=True) + "MERGE ME"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_logits = logits(base, ids)
    adapter_logits = logits(PeftModel.from_pretrained(base, lora_run).eval(), ids)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(merged), ids)
    assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter changes the model: a real check
    assert (merged_logits - adapter_logits).abs().max() < LOGITS_TOLERANCE


def test_merged_model_stands_alone(merged, lora_run):
    names = {p.name for p in merged.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(lora_run).chat_template
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == (eos[0] if isinstance(eos, list) else eos)


def test_4bit_export_loads_with_from_pretrained(lora_run, merged, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "nf4"
    run_cli("merge", lora_run, "-o", out, "--quantize", "4bit", "--dtype", "float32", check=True)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["bnb_4bit_quant_type"] == "nf4"
    model = AutoModelForCausalLM.from_pretrained(out)
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit" and layer.weight.dtype == torch.uint8
    full = AutoModelForCausalLM.from_pretrained(merged)
    ids = list(range(6, 40))
    quantized, reference = logits(model, ids).float(), logits(full, ids)
    # NF4 rounds each weight to one of 16 levels: close to the full-precision merge, not equal.
    cosine = torch.nn.functional.cosine_similarity(quantized.flatten(), reference.flatten(), dim=0)
    assert cosine > 0.95


def test_merge_into_a_different_base_is_refused(lora_run, tmp_path):
    from sft.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other-base", hidden_size=32)
    proc = run_cli("merge", lora_run, "-o", tmp_path / "out", "--base", other)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith(f"error: --base {other}: not the base the adapter in {lora_run} was trained on")
    assert "hidden_size 64 vs 32" in line and "\n" not in line
    assert not (tmp_path / "out").exists()


def test_merge_into_a_same_shaped_but_different_base_is_refused(lora_run, tiny_model, tmp_path):
    import shutil

    from sft.after_training.merging import differing_weight
    from sft.tiny import build_tiny_model

    sibling = build_tiny_model(tmp_path / "sibling", seed=1)  # same architecture, other weights
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert differing_weight(tiny_model, copy) is None
    assert differing_weight(tiny_model, sibling).startswith("model.layers.0.")
    proc = run_cli("merge", lora_run, "-o", tmp_path / "out", "--base", sibling)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "same architecture but different weights (model.layers.0." in proc.stderr
    assert "pass --allow-other-base to merge anyway" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_merge_refuses_to_write_into_an_existing_folder(lora_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("merge", lora_run, "-o", out)
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_push_publishes_the_merged_model(hub, merged):
    pushed = hub.files("tester/merged")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "recipe.yaml"):
        assert pushed[name] == (merged / name).read_bytes()
    assert "README.md" in pushed and not any(HUB_TOKEN.encode() in content for content in pushed.values())


@pytest.mark.slow
def test_qlora_adapter_merges_into_the_unquantized_base(tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tests.conftest import write_recipe

    quickstart_rows(tmp_path / "train.jsonl", 16)
    recipe = write_recipe(tmp_path / "q.yaml", model_name_or_path=str(tiny_model),
                          dataset_name=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "run"),
                          method="qlora", max_length=64, max_steps=2, per_device_train_batch_size=8,
                          learning_rate=5.0e-2, save_strategy="no", report_to="none")
    run_cli("train", recipe, check=True)
    out = tmp_path / "merged"
    run_cli("merge", tmp_path / "run", "-o", out, "--dtype", "float32", check=True)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}  # noqa: SIM118
    ids = list(range(6, 30))
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_logits = logits(base, ids)
    adapter_logits = logits(PeftModel.from_pretrained(base, tmp_path / "run").eval(), ids)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(out), ids)
    assert (adapter_logits - base_logits).abs().max() > 1e-3
    assert (merged_logits - adapter_logits).abs().max() < LOGITS_TOLERANCE
