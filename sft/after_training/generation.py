"""Text generation with a trained model, exactly as it was trained: the run's chat (or instruction) template, its
generation config (which stops on the trained end-of-turn token), batched with left padding. Loads full models and
LoRA/QLoRA adapters alike (an adapter is applied to its base with peft, not merged)."""

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from sft.errors import UserError


@dataclass
class Loaded:
    model: object
    tokenizer: object
    generation_config: object
    path: Path  # the folder the weights (or the adapter) came from
    base: str | None = None  # for an adapter: its base model
    instruction_template: str = "chat"  # how the run rendered instruction data ("chat" or "alpaca")
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Finding and loading


def quiet() -> None:
    """Commands that read data and load a model print their result, not library progress bars and notices."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as transformers_logging

    from sft.console import quiet_library_noise

    quiet_library_noise()
    # peft asks transformers a renamed question when it loads an adapter; the user did nothing wrong.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    disable_progress_bar()
    transformers_logging.disable_progress_bar()


def model_folder(path: str) -> Path:
    """The folder holding weights: the path itself, or for a run that never saved a final model, its newest
    complete checkpoint."""
    from sft.train.checkpoints import complete_checkpoints

    folder = Path(path)
    if not folder.exists():
        raise UserError(f"{path}: no such model or run directory")
    if not folder.is_dir():
        raise UserError(f"{path}: not a folder; give a model folder or a run's output_dir")
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return folder
    found = complete_checkpoints(folder)
    if found:
        return found[-1]
    raise UserError(f"{path}: holds neither a model (config.json) nor an adapter (adapter_config.json) nor a "
                    "checkpoint; give a model folder or a run's output_dir")


def adapter_base(folder: Path, base: str | None = None) -> str:
    """The base model an adapter was trained on (or the one given), checked to exist."""
    recorded = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    chosen = base or recorded
    if not chosen:
        raise UserError(f"{folder}/adapter_config.json: names no base_model_name_or_path; pass --base MODEL")
    looks_local = chosen.startswith((".", "/", "~")) or chosen.count("/") > 1
    if looks_local and not Path(chosen).expanduser().is_dir():
        where = "--base" if base else f"{folder}/adapter_config.json"
        raise UserError(f"{where}: base model {chosen} cannot be found; pass --base PATH to the base model folder")
    return chosen


def run_recipe_values(folder: Path) -> dict:
    """The resolved recipe sft saved beside the model (or the run above a checkpoint), or {}."""
    import yaml

    for candidate in (folder / "recipe.yaml", folder.parent / "recipe.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text()) or {}
    return {}


def load_base(name: str, dtype=None, trust_remote_code: bool = False, vocab_size: int | None = None, **kwargs):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if trust_remote_code else True, **kwargs)
    except OSError as err:
        raise UserError(f"{name}: cannot load model: {str(err).splitlines()[0]}") from err
    if vocab_size and vocab_size != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size)  # the run added template tokens; the adapter expects them
    return model


def load(path: str, dtype: str | None = None, base: str | None = None) -> Loaded:
    """A model folder, a run's output_dir, or an adapter folder -> model (eval mode), tokenizer, generation config."""
    from transformers import AutoTokenizer, GenerationConfig

    from sft.model import torch_dtype

    folder = model_folder(path)
    recipe = run_recipe_values(folder)
    trust = bool(recipe.get("trust_remote_code", False))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust)
    except OSError as err:
        raise UserError(f"{folder}: cannot load its tokenizer: {str(err).splitlines()[0]}") from err
    notes = [] if folder == Path(path) else [f"using {folder} (no final model in {path})"]
    is_adapter = (folder / "adapter_config.json").is_file()
    base_name = None
    if is_adapter:
        from peft import PeftModel

        base_name = adapter_base(folder, base)
        model = load_base(base_name, torch_dtype(dtype), trust, vocab_size=len(tokenizer))
        try:
            model = PeftModel.from_pretrained(model, str(folder))
        except RuntimeError as err:  # size mismatch: the adapter was trained on another architecture
            raise UserError(f"{folder}: adapter does not fit base {base_name}: "
                            f"{str(err).strip().splitlines()[-1].strip()}") from err
    else:
        model = load_base(str(folder), torch_dtype(dtype), trust)
    model.eval()
    if (folder / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(str(folder))
    else:
        generation_config = GenerationConfig.from_model_config(model.config)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id)
    return Loaded(model=model, tokenizer=tokenizer, generation_config=generation_config, path=folder, base=base_name,
                  instruction_template=recipe.get("instruction_template") or "chat", notes=notes)


# ---------------------------------------------------------------------------------------------------------------
# Prompts as the run saw them


def render_prompt(tokenizer, prompt, instruction_template: str = "chat") -> str:
    """A user message (str) or a conversation (list of messages) -> the text the model continues.

    Conversations and user messages go through the chat template with the assistant header appended; a run
    that rendered instruction data with the Alpaca prompt gets that prompt; a tokenizer without a chat template
    gets the text as it is."""
    from sft.data.formats import ALPACA_PROMPT

    if isinstance(prompt, list):
        if not tokenizer.chat_template:
            raise UserError("the model has no chat template, so a conversation cannot be rendered; give plain text")
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if instruction_template == "alpaca":
        return ALPACA_PROMPT.format(with_input="", instruction=prompt, input_block="")
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def prompt_and_reference(example: dict) -> tuple[object, str | None]:
    """A normalised example (sft.data.formats.normalise) -> (prompt: text or messages, reference answer or None)."""
    if example.get("messages") is not None:
        messages = list(example["messages"])
        turns = example.get("_completion_turns") or 1
        if messages and messages[-1].get("role") == "assistant":
            answer = messages[-turns:]
            reference = "\n".join(str(m.get("content") or "") for m in answer)
            return messages[:-turns], reference
        return messages, None
    if example.get("completion") is not None:
        return example["prompt"], example["completion"]
    return example.get("text", ""), None


def prompt_text(tokenizer, prompt) -> str:
    """Like render_prompt, but a prompt/completion prompt string is used verbatim, as it was in training."""
    if isinstance(prompt, list):
        return render_prompt(tokenizer, prompt)
    return prompt


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Generating


def left_padded(tokenizer, texts: list[str], device):
    """Token ids padded on the left (so every prompt ends where generation starts) and their attention mask."""
    import torch

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    return input_ids, mask


def generate(model, tokenizer, texts: list[str], generation_config=None, max_new_tokens: int = 128,
             batch_size: int = 8, streamer=None, **overrides) -> list[str]:
    """Greedy (unless the generation config samples) continuations of already-rendered prompt texts."""
    import copy

    import torch
    from transformers import GenerationConfig

    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.eos_token_id = stop_token_ids(tokenizer, generation_config)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for key, value in overrides.items():
        setattr(config, key, value)
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            input_ids, mask = left_padded(tokenizer, texts[start:start + batch_size], device)
            generated = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                       streamer=streamer)
            for row in generated[:, input_ids.shape[1]:]:
                outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    return outputs
