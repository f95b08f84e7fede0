"""Preprocessing speed: sft's render/tokenize/mask against TRL 1.16's own SFTTrainer dataset preparation.

Synthetic multi-turn conversations (default 20,000), a byte-level BPE tokenizer built locally (sft.tiny, nothing
downloaded, with the template's special tokens added) and a chat template TRL ships a training version of
(default Llama 3, whose TRL masks train what sft trains), so that TRL's `assistant_only_loss=True` works and the
labels of both can be compared token for token. Both start from the same in-memory dataset of {"messages": [...]}
rows, in one process, one after the other. TRL's side is `SFTTrainer._prepare_dataset`, the preparation
SFTTrainer runs on its train dataset; sft's side is the path `sft train` takes (validate and normalise every row,
then render, tokenize and mask). Prints examples/s of each, the ratio, whether the labels are identical, and the
time of a second sft pass served by the cache.

    python bench/preprocess.py [--examples 20000] [--template llama3] [--seed 0]
"""

import argparse
import os
import random
import re
import sys
import tempfile
import time
import warnings

WORDS = ("the a model learns to answer questions about data in many languages while users ask for help with code "
         "math history science and travel plans then thanks it kindly").split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 48))]
    text = " ".join(words).capitalize()
    return text + rng.choice([".", "?", "!", ":\n- item one\n- item two", " 42."])


def conversations(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = [{"role": "system", "content": sentence(rng)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            messages += [{"role": "user", "content": sentence(rng)}, {"role": "assistant", "content": sentence(rng)}]
        rows.append({"messages": messages})
    return rows


def trl_prepare(dataset, tokenizer):
    """TRL 1.16's own SFTTrainer preparation with assistant_only_loss (the trainer is built on a tiny slice)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sft.tiny import build_model_config

    model = AutoModelForCausalLM.from_config(build_model_config(len(tokenizer), hidden_size=32, layers=1))
    args = SFTConfig(output_dir=tempfile.mkdtemp(), assistant_only_loss=True, bf16=False, report_to=[],
                     max_length=None, shuffle_dataset=False, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset.select(range(8)), processing_class=tokenizer)
    started = time.perf_counter()
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    return prepared, time.perf_counter() - started


def sft_prepare(dataset, tokenizer, use_cache: bool):
    """What `sft train` does with the same rows: normalise, then render, tokenize and mask (sft.data, sft.masks)."""
    from sft.data import Source, as_dataset, normalise_rows
    from sft.masks import summarise, tokenize_all

    started = time.perf_counter()
    part = normalise_rows(dataset, [f"row {i + 1}" for i in range(len(dataset))], "chat", Source("bench", "bench"))
    examples = as_dataset([(e, w, 0) for e, w in zip(part.examples, part.wheres)])
    tokenized = tokenize_all(examples, tokenizer, "assistant", use_cache=use_cache)
    keep, stats, problems = summarise(tokenized, "bench", False, 0.5, None)
    assert not problems, problems
    result = tokenized.full.select(keep).select_columns(["input_ids", "labels"])
    return result, time.perf_counter() - started, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--template", default="llama3", help="a TRL template with a training version whose masks "
                        "train what sft trains (see README, Versus TRL)")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SFT_CACHE_DIR", tempfile.mkdtemp(prefix="sft-bench-cache-"))
    warnings.filterwarnings("ignore")
    from pathlib import Path

    import datasets
    import trl
    from datasets import Dataset

    from sft.tiny import build_tokenizer

    datasets.disable_progress_bars()
    template = (Path(trl.__file__).parent / "chat_templates" / f"{options.template}.jinja").read_text()
    rows = conversations(options.examples, options.seed)
    tokenizer = build_tokenizer("bpe", chat_template=template,
                                corpus=[m["content"] for r in rows[:2000] for m in r["messages"]])
    specials = sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>", template)))  # as the real tokenizer has them
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    dataset = Dataset.from_list(rows)
    print(f"{len(dataset):,} conversations, {sum(len(r['messages']) for r in rows):,} messages, template "
          f"{options.template}, BPE tokenizer of {len(tokenizer)} tokens, {os.cpu_count()} CPUs", flush=True)

    theirs, trl_seconds = trl_prepare(dataset, tokenizer)
    ours, sft_seconds, stats = sft_prepare(dataset, tokenizer, use_cache=True)
    again, cached_seconds, cached_stats = sft_prepare(dataset, tokenizer, use_cache=True)

    same_ids = theirs["input_ids"] == ours["input_ids"]
    same_labels = theirs["labels"] == ours["labels"]
    n = len(dataset)
    print(f"TRL {trl.__version__} SFTTrainer preparation: {n / trl_seconds:10,.0f} examples/s ({trl_seconds:.1f} s)")
    print(f"sft (normalise, render, tokenize, mask):  {n / sft_seconds:10,.0f} examples/s ({sft_seconds:.1f} s, "
          f"cache {stats['cache']})")
    print(f"ratio sft / TRL: {trl_seconds / sft_seconds:.2f}x")
    print(f"sft second pass, same inputs:             {n / cached_seconds:10,.0f} examples/s ({cached_seconds:.1f} s, "
          f"cache {cached_stats['cache']})")
    print(f"input_ids identical: {same_ids}; labels identical: {same_labels} "
          f"({stats['trained_tokens']:,} of {stats['tokens']:,} tokens trained)")
    return 0 if same_ids and same_labels else 1


if __name__ == "__main__":
    sys.exit(main())
