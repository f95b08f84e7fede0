"""Preprocessing speed and peak memory: the path `sft train` takes against TRL 1.16's SFTTrainer preparation.

Synthetic multi-turn conversations written as a JSON Lines file (default 20,000 and 200,000), a byte-level BPE
tokenizer built locally (sft.tiny, nothing downloaded) with a chat template TRL ships a training version of
(Llama 3, whose TRL masks train what sft trains), saved with a tiny model as an ordinary model folder.

Both sides start from the JSONL file, with the same `dataset_num_proc` and nothing cached:
  sft: a recipe (dataset_name: the file, data_cache: false) through `prepare_data`, as `sft train` calls it;
  TRL: `load_dataset("json")`, then `SFTTrainer._prepare_dataset` with assistant_only_loss, as SFTTrainer does.
Each side runs in its own subprocess with its own datasets cache. Time: the preparation alone (imports and the
tokenizer load excluded, on both sides). Peak memory, summed over the subprocess and all its children (the num_proc
workers), sampled every 250 ms from /proc/PID/smaps_rollup: anonymous memory (Pss_Anon: heap, not the pages of
memory-mapped Arrow files) and all resident memory (Pss); proportional, so pages forked workers share are not
counted twice. The labels of both are compared token for token (TRL's assistant masks read as labels).

On a shared machine one run of each side says little: the sides run in interleaved pairs (sft first, then TRL
first, ...), each pair gives a ratio, and the median ratio over the pairs is the figure. `--sft-only` runs sft's side
alone (`--pairs` runs per size), measured the same way: how its peak memory grows with the number of rows, at sizes
where TRL's side would take hours.

    python bench/preprocess.py [--sizes 20000,200000] [--pairs 3] [--num-proc 2] [--template llama3] [--seed 0]
                               [--sft-only]
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Reading smaps_rollup walks every mapped page, taking CPU from the measured run: every 50 ms it slowed sft's side by
# 30% (29.4 s unsampled, 38-40 s sampled at 200,000), more than TRL's; peaks read every 250 ms were within 0.02 GB.
SAMPLE_SECONDS = 0.25
WORDS = ("the a model learns to answer questions about data in many languages while users ask for help with code "
         "math history science and travel plans then thanks it kindly").split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 48))]
    text = " ".join(words).capitalize()
    return text + rng.choice([".", "?", "!", ":\n- item one\n- item two", " 42."])


def conversations(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        messages = [{"role": "system", "content": sentence(rng)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            messages += [{"role": "user", "content": sentence(rng)}, {"role": "assistant", "content": sentence(rng)}]
        yield {"messages": messages}


def build_model(folder: Path, template_name: str, seed: int) -> None:
    """A tiny Llama with a BPE tokenizer trained on the data's words and TRL's training template."""
    import trl
    from transformers import AutoModelForCausalLM

    from sft.tiny import build_model_config, build_tokenizer

    template = (Path(trl.__file__).parent / "chat_templates" / f"{template_name}.jinja").read_text()
    corpus = [m["content"] for row in conversations(2000, seed) for m in row["messages"]]
    tokenizer = build_tokenizer("bpe", chat_template=template, corpus=corpus)
    specials = sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>", template)))  # as the real tokenizer has them
    tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    config = build_model_config(len(tokenizer), hidden_size=32, layers=1)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def digest_of(dataset) -> str:
    """sha256 of every row's input_ids and labels (lengths included), read batch by batch from Arrow."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=10_000):
        ids = batch.column("input_ids")
        if "labels" in batch.column_names:
            labels = batch.column("labels").combine_chunks().values.to_numpy()
        else:  # TRL: labels are the input ids where the assistant mask is 1
            masks = batch.column("assistant_masks").combine_chunks().values.to_numpy()
            labels = np.where(masks == 1, ids.combine_chunks().values.to_numpy(), -100)
        lengths = ids.combine_chunks().value_lengths().to_numpy()
        digest.update(np.asarray(lengths, np.int64).tobytes())
        digest.update(np.asarray(ids.combine_chunks().values.to_numpy(), np.int64).tobytes())
        digest.update(np.asarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def sft_worker(model: Path, data: Path, num_proc: int, work: Path) -> dict:
    from sft.data.prepare import prepare_data, recipe_tokenizer
    from sft.recipe.load import load_recipe

    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(json.dumps({"model_name_or_path": str(model), "dataset_name": str(data),
                                       "output_dir": str(work / "out"), "data_cache": False,
                                       "dataset_num_proc": num_proc}))
    recipe = load_recipe(str(recipe_path))
    tokenizer = recipe_tokenizer(recipe)
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    prepared = prepare_data(recipe, tokenizer)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": len(prepared.train), "digest": digest_of(prepared.train)}


def trl_worker(model: Path, data: Path, num_proc: int, work: Path) -> dict:
    import datasets
    from datasets import Dataset, load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(model)
    args = SFTConfig(output_dir=str(work / "out"), assistant_only_loss=True, bf16=False, report_to=[],
                     max_length=None, shuffle_dataset=False, use_cpu=True, dataset_num_proc=num_proc)
    tiny = Dataset.from_list([row for row, _ in zip(conversations(8, 0), range(8))])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args, train_dataset=tiny,
                         processing_class=tokenizer)
    started = time.perf_counter()
    dataset = load_dataset("json", data_files=str(data), split="train")
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": len(prepared), "digest": digest_of(prepared)}


def memory_of(pid: int) -> tuple[int, int]:
    """(Pss_Anon, Pss) of one process in bytes; zeros once it has gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return 0, 0
    return (int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024, int(fields.get("Pss", "0 kB").split()[0]) * 1024)


def measured(side: str, model: Path, data: Path, num_proc: int, work: Path) -> dict:
    """Run one side in a fresh subprocess; its result plus the peak memory of its process tree."""
    import psutil

    work.mkdir(parents=True)
    result_file = work / "result.json"
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-cache"), "SFT_CACHE_DIR": str(work / "sft-cache"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(model), "--data", str(data), "--num-proc",
           str(num_proc), "--work", str(work)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, peak_anon, peak_pss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            tree = [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            tree = []
        sizes = [memory_of(pid) for pid in tree]
        peak_anon = max(peak_anon, sum(anon for anon, _ in sizes))
        peak_pss = max(peak_pss, sum(pss for _, pss in sizes))
        time.sleep(SAMPLE_SECONDS)
    output = proc.stdout.read()
    if proc.returncode != 0 or not result_file.is_file():
        raise SystemExit(f"{side} failed:\n{output[-4000:]}")
    result = json.loads(result_file.read_text())
    shutil.rmtree(work, ignore_errors=True)  # the next pair starts with nothing cached
    return {**result, "peak_anon": peak_anon, "peak_pss": peak_pss}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="conversations per run, comma-separated")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved sft/TRL pairs per size (median ratio)")
    parser.add_argument("--num-proc", type=int, default=2, help="dataset_num_proc of both sides")
    parser.add_argument("--template", default="llama3", help="a TRL template with a training version")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-only", action="store_true", help="sft's side alone: its speed and memory growth")
    parser.add_argument("--worker", choices=["sft", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    if options.worker:
        work = Path(options.work)
        run = sft_worker if options.worker == "sft" else trl_worker
        result = run(Path(options.model), Path(options.data), options.num_proc, work)
        (work / "result.json").write_text(json.dumps(result))
        return 0

    sizes = [int(s) for s in options.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="sft-bench-preprocess-"))
    try:
        return (sft_alone if options.sft_only else compare)(sizes, options, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def median(values):
    import statistics

    return statistics.median(values)


def write_data(root: Path, size: int, seed: int) -> Path:
    data = root / f"data-{size}.jsonl"
    with data.open("w") as handle:
        for row in conversations(size, seed):
            handle.write(json.dumps(row) + "\n")
    return data


def print_growth(peaks: dict) -> None:
    if len(peaks) > 1:
        small, large = min(peaks), max(peaks)
        print(f"sft peak anonymous memory at {large:,} / at {small:,} (medians): "
              f"{median(peaks[large]) / median(peaks[small]):.2f}x (target <= 1.3x)")


def sft_alone(sizes: list[int], options, root: Path) -> int:
    """sft's side only, `options.pairs` runs per size: speed and peak memory, and the growth of the peak."""
    model = root / "model"
    build_model(model, options.template, options.seed)
    print(f"sft alone: template {options.template}, dataset_num_proc {options.num_proc}, {os.cpu_count()} CPUs, "
          f"{options.pairs} runs per size; memory summed over the process and its workers", flush=True)
    print(f"{'conversations':>13} {'run':>4} {'sft ex/s':>9} {'sft anon':>9} {'sft pss':>8}", flush=True)
    peaks = {}
    for size in sizes:
        data, peaks[size] = write_data(root, size, options.seed), []
        for run in range(1, options.pairs + 1):
            ours = measured("sft", model, data, options.num_proc, root / f"sft-{size}-{run}")
            peaks[size].append(ours["peak_anon"])
            print(f"{size:>13,} {run:>4} {size / ours['seconds']:>9,.0f} {ours['peak_anon'] / 2**30:>7.2f}GB "
                  f"{ours['peak_pss'] / 2**30:>6.2f}GB", flush=True)
        data.unlink()
    print_growth(peaks)
    return 0


def compare(sizes: list[int], options, root: Path) -> int:
    import trl

    model = root / "model"
    build_model(model, options.template, options.seed)
    print(f"template {options.template}, dataset_num_proc {options.num_proc}, {os.cpu_count()} CPUs, "
          f"TRL {trl.__version__}, {options.pairs} interleaved pairs per size; memory: peak anonymous (Pss_Anon) "
          "and resident (Pss) summed over the process and its workers; ratios are sft / TRL (speed: TRL time / sft "
          "time)", flush=True)
    print(f"{'conversations':>13} {'pair':>4} {'sft ex/s':>9} {'TRL ex/s':>9} {'speed':>6} {'sft anon':>9} "
          f"{'TRL anon':>9} {'anon':>6} {'sft pss':>8} {'TRL pss':>8} {'pss':>6}  identical", flush=True)
    peaks, all_same = {}, True
    for size in sizes:
        data = write_data(root, size, options.seed)
        speed, anon, pss, peaks[size] = [], [], [], []
        for pair in range(1, options.pairs + 1):
            order = ("sft", "trl") if pair % 2 else ("trl", "sft")
            runs = {side: measured(side, model, data, options.num_proc, root / f"{side}-{size}-{pair}")
                    for side in order}
            ours, theirs = runs["sft"], runs["trl"]
            same = ours["digest"] == theirs["digest"] and ours["examples"] == theirs["examples"] == size
            all_same &= same
            speed.append(theirs["seconds"] / ours["seconds"])
            anon.append(ours["peak_anon"] / theirs["peak_anon"])
            pss.append(ours["peak_pss"] / theirs["peak_pss"])
            peaks[size].append(ours["peak_anon"])
            print(f"{size:>13,} {pair:>4} {size / ours['seconds']:>9,.0f} {size / theirs['seconds']:>9,.0f} "
                  f"{speed[-1]:>5.2f}x {ours['peak_anon'] / 2**30:>7.2f}GB {theirs['peak_anon'] / 2**30:>7.2f}GB "
                  f"{anon[-1]:>5.2f}x {ours['peak_pss'] / 2**30:>6.2f}GB {theirs['peak_pss'] / 2**30:>6.2f}GB "
                  f"{pss[-1]:>5.2f}x  {same}", flush=True)
        data.unlink()
        print(f"{size:>13,} median speed {median(speed):.2f}x (target >= 2.5x), anonymous memory "
              f"{median(anon):.2f}x (target <= 1x), resident memory {median(pss):.2f}x", flush=True)
    print_growth(peaks)
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
