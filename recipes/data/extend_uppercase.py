"""How the quickstart's training files were made: the first round's 800 rows, then new random lowercase words
(3-7 letters, seeded) up to the size that makes the tiny model learn the rule instead of memorising rows.
No held-out word ever appears in training. Rerunning it rewrites the same files byte for byte.

    python recipes/data/extend_uppercase.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION_ROWS = 6000  # 3 epochs at batch 16 = 1,125 steps; 800 rows were memorised (held-out 0.67)
CHAT_ROWS = 3000         # 1-3 turns each
FIRST_ROUND_ROWS = 800
SYSTEM = "Reply in capitals."


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def user_words(rows: list[dict]) -> set[str]:
    return {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}


def main() -> None:
    heldout = {r["output"].lower() for r in read_jsonl(HERE / "uppercase_heldout.jsonl")}
    heldout |= user_words(read_jsonl(HERE / "uppercase_chat_heldout.jsonl"))
    instruction = read_jsonl(HERE / "uppercase_train.jsonl")[:FIRST_ROUND_ROWS]
    chat = read_jsonl(HERE / "uppercase_chat_train.jsonl")[:FIRST_ROUND_ROWS]
    used = heldout | {r["output"].lower() for r in instruction} | user_words(chat)
    rng = random.Random(0)

    def new_word() -> str:
        while True:
            word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
            if word not in used:
                used.add(word)
                return word

    while len(instruction) < INSTRUCTION_ROWS:
        word = new_word()
        instruction.append({"instruction": f"Uppercase: {word}", "output": word.upper()})
    while len(chat) < CHAT_ROWS:
        messages = [{"role": "system", "content": SYSTEM}]
        for _ in range(rng.randint(1, 3)):
            word = new_word()
            messages += [{"role": "user", "content": word}, {"role": "assistant", "content": word.upper()}]
        chat.append({"messages": messages})
    write_jsonl(HERE / "uppercase_train.jsonl", instruction)
    write_jsonl(HERE / "uppercase_chat_train.jsonl", chat)


if __name__ == "__main__":
    main()
