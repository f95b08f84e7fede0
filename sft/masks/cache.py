"""The on-disk cache of tokenized datasets: a key made of the examples, the tokenizer, the template, the stop
tokens, the chat_template_kwargs and the settings, so that a second run with unchanged inputs reuses the result
and any change to one of them does not."""

import hashlib
import json
import os
from pathlib import Path

CACHE_VERSION = "2"  # bump when the masks module's output changes for the same inputs


def cache_root() -> Path:
    if os.environ.get("SFT_CACHE_DIR"):
        return Path(os.environ["SFT_CACHE_DIR"])
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "sft-tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "split_special_tokens", False)).encode())
    return digest.hexdigest()


def cache_key(dataset, tokenizer, plan, settings: dict) -> str:
    """Examples (with their tools and chat_template_kwargs) + tokenizer + plan + settings + versions."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    header = {"v": CACHE_VERSION, "sft": version("sft"), "tokenizers": version("tokenizers"),
              "transformers": version("transformers"), "template": plan.template, "stops": plan.stop_tokens,
              "closer": [plan.closer, plan.closer_written_last], "kwargs": plan.template_kwargs, **settings}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(dataset.column_names).encode())
    for batch in dataset.iter(batch_size=10_000):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]
