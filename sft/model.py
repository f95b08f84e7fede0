"""Model loading for each method: full, LoRA (16-bit or 8-bit base), QLoRA (4-bit NF4 base) and freeze."""

import re
from pathlib import Path

from sft.errors import UserError


def check_model_source(recipe) -> None:
    """Fail early, before any data work, when a local-looking model path does not exist."""
    name = recipe.model.model_name_or_path
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise UserError(f"{recipe.source}: model_name_or_path {name} does not exist")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise UserError(f"{recipe.source}: model_name_or_path {name} is a folder without config.json")
    if Path(name).is_dir():
        check_local_model(Path(name), recipe.training.trust_remote_code, recipe.source)


# Weight files that are pickles: loading one can run code.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
PICKLE_ADVICE = ("sft loads only safetensors: convert it once (AutoModelForCausalLM.from_pretrained(FOLDER, "
                 "use_safetensors=False).save_pretrained(FOLDER), which writes model.safetensors)")


def check_local_model(folder: Path, trust_remote_code: bool, source: str) -> None:
    """A local model that needs its own code, or has only pickled weights, fails here with what to change
    (transformers would fail after the data was prepared, asking for trust_remote_code or naming a missing
    model.safetensors)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{folder / 'config.json'}: not valid JSON ({err})") from None
    if not trust_remote_code:
        from transformers import CONFIG_MAPPING

        model_type = config.get("model_type")
        if config.get("auto_map") or (model_type and model_type not in CONFIG_MAPPING):
            why = ("its config.json maps to code in the model folder (auto_map)" if config.get("auto_map") else
                   f"its model_type {model_type!r} is unknown to this transformers; or upgrade transformers")
            raise UserError(f"{source}: model {folder} needs its own Python code ({why}); set trust_remote_code: "
                            "true if you trust that code")
    # Refused even with trust_remote_code: that trusts the model's code, not a pickle torch.load would run.
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickles:
            raise UserError(f"{source}: model {folder} has only pickled weights ({', '.join(pickles)}), which "
                            f"are refused because loading a pickle can run code; {PICKLE_ADVICE}")


def load_tokenizer(recipe):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            recipe.model.model_name_or_path,
            revision=recipe.model.model_revision,
            trust_remote_code=recipe.training.trust_remote_code,
        )
    except OSError as err:
        raise UserError(f"{recipe.model.model_name_or_path}: cannot load tokenizer: "
                        f"{str(err).splitlines()[0]}") from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise remote_code_error(recipe) from err
        raise


def remote_code_error(recipe) -> UserError:
    """transformers' refusal of a Hub model that needs its own code, as one line."""
    return UserError(f"{recipe.source}: model {recipe.model.model_name_or_path} needs its own Python code; set "
                     "trust_remote_code: true if you trust that code")


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return None
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise UserError(f"--dtype {name}: not a torch dtype; use float32, bfloat16 or float16")
    return getattr(torch, name)


def quantization_config(recipe):
    """4-bit NF4 with double quantization, compute dtype and storage dtype consistent (ZeRO-3 shards storage)."""
    from transformers import BitsAndBytesConfig

    model_args = recipe.model
    if model_args.load_in_4bit:
        from sft.launch.profiles import compute_dtype

        compute = compute_dtype(recipe.training)
        storage = model_args.bnb_4bit_quant_storage or compute
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute),
            bnb_4bit_quant_storage=torch_dtype(storage),
        )
    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def describe_quantization(quant) -> str:
    """One line for the user: what the base weights were loaded as."""
    if not quant.load_in_4bit:
        return "8-bit (LLM.int8)"
    compute, storage = (str(d).removeprefix("torch.") for d in (quant.bnb_4bit_compute_dtype,
                                                                 quant.bnb_4bit_quant_storage))
    double = ", double quantization" if quant.bnb_4bit_use_double_quant else ""
    return f"4-bit {quant.bnb_4bit_quant_type.upper()}{double}, compute {compute}, storage {storage}"


def load_model(recipe, tokenizer, added_tokens: list[str]):
    from transformers import AutoModelForCausalLM

    model_args = recipe.model
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=recipe.training.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=torch_dtype(model_args.dtype) or "auto",
        use_safetensors=True,
    )
    quant = quantization_config(recipe)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["dtype"] = quant.bnb_4bit_compute_dtype if model_args.load_in_4bit else kwargs["dtype"]
    kwargs.update(recipe.training.model_init_kwargs or {})
    try:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    except OSError as err:
        message = str(err).splitlines()[0]
        if "model.safetensors" in message:
            message += f" (pickled weights such as pytorch_model.bin are refused: {PICKLE_ADVICE})"
        raise UserError(f"{model_args.model_name_or_path}: cannot load model: {message}") from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise remote_code_error(recipe) from err
        raise
    if quant is not None:
        from sft.console import say

        say(f"base loaded in {describe_quantization(quant)}")
    if added_tokens or len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def meta_model(recipe):
    """The recipe's model built from its config on the meta device (no weights read, no memory), for `sft check`
    to run the checks that need the model's module names."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = recipe.training.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(recipe.model.model_name_or_path, revision=recipe.model.model_revision,
                                            trust_remote_code=trust)
    except OSError as err:
        raise UserError(f"{recipe.model.model_name_or_path}: cannot load the model's config: "
                        f"{str(err).splitlines()[0]}") from err
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def check_against_model(recipe, model) -> str | None:
    """The last checks before training, run by `sft train` on the loaded model and by `sft check` on the meta
    model: freeze sets which parameters train (and refuses patterns that match nothing), every LoRA target names a
    module, and a run that already reached its end is left as it is (checked last, so that any other bad input is
    named first). Returns where the run starts (sft.train.output_dir.StartPoint)."""
    from sft.recipe.checks import check_lora_targets
    from sft.train.output_dir import start_point

    if recipe.sft.method == "freeze":
        freeze(model, recipe.sft.trainable_layers, recipe.sft.trainable_modules)
    check_lora_targets(model, recipe)
    return start_point(recipe)


def freeze(model, trainable_layers: int | None, trainable_modules: list[str] | None) -> list[str]:
    """Train only the last N transformer blocks and parameters matching the patterns. Returns trained names."""
    layer_index = re.compile(r"\.layers\.(\d+)\.")
    indices = sorted({int(m.group(1)) for n, _ in model.named_parameters() if (m := layer_index.search(n))})
    if trainable_layers and trainable_layers > len(indices):
        raise UserError(f"trainable_layers is {trainable_layers} but the model has only {len(indices)} blocks")
    last = set(indices[-trainable_layers:]) if trainable_layers else set()
    patterns = [re.compile(p) for p in trainable_modules or []]
    trained = []
    for name, param in model.named_parameters():
        m = layer_index.search(name)
        keep = (m is not None and int(m.group(1)) in last) or any(p.search(name) for p in patterns)
        param.requires_grad_(keep)
        if keep:
            trained.append(name)
    if not trained:
        raise UserError(f"trainable_modules {trainable_modules} match no parameter of the model")
    return trained


def peft_config(recipe):
    if not recipe.model.use_peft:
        return None
    from trl import get_peft_config

    return get_peft_config(recipe.model)


def trainable_parameters(model) -> str:
    """'trainable parameters: N of M (P%)', counting each 4-bit weight by its real element count (bitsandbytes
    packs two 4-bit values per byte, so its Params4bit.numel() is half the weight's)."""
    import math

    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        count = math.prod(quant_state.shape) if quant_state is not None else param.numel()
        total += count
        trainable += count if param.requires_grad else 0
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
