"""Run by tests/data/test_data_once_per_node.py, alone or under `accelerate launch`: prepare a recipe's data as
`sft train` does and write what this rank got (its tokens and the CPU time preparation took in this process)."""

import hashlib
import json
import os
import sys
import time


def main(recipe_path: str, out_dir: str) -> None:
    from sft.data.prepare import prepare_data, recipe_tokenizer
    from sft.recipe.load import load_recipe

    recipe = load_recipe(recipe_path)
    tokenizer = recipe_tokenizer(recipe)
    import datasets  # noqa: F401  (imported by the trainer anyway: its import is not preparation)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the process group, as the trainer sets it up anyway
        from accelerate import PartialState

        PartialState()
    started = time.process_time()
    data = prepare_data(recipe, tokenizer)
    seconds = time.process_time() - started
    tokens = [list(data.train["input_ids"]), list(data.train["labels"])]
    digest = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "cpu_seconds": seconds, "examples": len(data.train), "tokens_sha256": digest}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
