"""Run by tests/test_fsdp2.py under torchrun: torch's FSDP2 (`fully_shard`, one unit per decoder block plus the
root, as accelerate's TRANSFORMER_BASED_WRAP does) on a CPU device mesh over gloo, without accelerate.

    torchrun --nproc_per_node N tests/support/fsdp2_worker.py MODEL_DIR OUT_DIR full|qlora

The 4 rows of one fixed batch are split evenly over the ranks; one AdamW step. Rank 0 writes every rank's loss,
the local shard shapes and the trained weights gathered whole (full: every weight; qlora: the LoRA weights)."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

ROWS = 4


def load(model_dir: str, method: str):
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model, model.model.layers
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    # Quant storage equal to the compute dtype, as sft sets it under FSDP: the 4-bit weights shard as float32.
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, quantization_config=quantization)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    return model, base.model.layers


def main(model_dir: str, out: str, method: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same LoRA initialisation on every rank and in every run
    model, blocks = load(model_dir, method)
    mesh = init_device_mesh("cpu", (world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ids = (torch.arange(ROWS * 16).reshape(ROWS, 16) * 7) % 50 + 3
    per_rank = ROWS // world
    mine = ids[rank * per_rank:(rank + 1) * per_rank]
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    loss = model(input_ids=mine, labels=mine).loss
    loss.backward()  # FSDP2 averages the gradients over the ranks (reduce-scatter)
    optimizer.step()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    weights = {name: p.full_tensor() for name, p in model.named_parameters() if p.requires_grad}
    shards = {name: list(p.to_local().shape) for name, p in model.named_parameters()}
    if rank == 0:
        torch.save(weights, f"{out}/weights.pt")
        with open(f"{out}/result.json", "w") as f:
            json.dump({"world": world, "losses": [x.item() for x in losses], "shards": shards}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
