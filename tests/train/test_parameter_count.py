"""The trainable parameter count printed at the start of every run, against a hand count of the tiny Llama:
hidden h=64, intermediate 2h, 2 blocks, vocabulary V, untied head, no biases."""

import torch

from sft.model import freeze, trainable_parameters
from sft.tiny import build_model_config

H, INTER, V = 64, 128, 100
BLOCK = 4 * H * H + 3 * H * INTER + 2 * H  # q, k, v, o; gate, up, down; two RMSNorms
TOTAL = V * H + 2 * BLOCK + H + V * H  # embeddings, blocks, final norm, lm_head


def tiny():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(build_model_config(V, hidden_size=H, layers=2, heads=4))


def test_full_and_freeze():
    model = tiny()
    assert trainable_parameters(model) == f"trainable parameters: {TOTAL:,} of {TOTAL:,} (100.00%)"
    freeze(model, trainable_layers=1, trainable_modules=None)
    assert trainable_parameters(model) == (f"trainable parameters: {BLOCK:,} of {TOTAL:,} "
                                           f"({100 * BLOCK / TOTAL:.2f}%)")


def test_lora_counts_only_the_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    lora = 2 * 2 * 8 * (H + H)  # 2 blocks x (q, v) x r x (in + out)
    assert trainable_parameters(model) == (f"trainable parameters: {lora:,} of {TOTAL + lora:,} "
                                           f"({100 * lora / (TOTAL + lora):.2f}%)")


def test_a_4bit_weight_counts_its_real_elements():
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(H, INTER, bias=False, quant_type="nf4").to("cpu")  # quantizes: 2 values per byte
    layer.weight.requires_grad_(False)
    assert layer.weight.numel() == H * INTER // 2
    model = torch.nn.Sequential(layer, torch.nn.Linear(INTER, 3, bias=False))
    assert trainable_parameters(model) == (f"trainable parameters: {INTER * 3:,} of {H * INTER + INTER * 3:,} "
                                           f"({100 * INTER * 3 / (H * INTER + INTER * 3):.2f}%)")
