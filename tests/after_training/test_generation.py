"""`sft generate` and `sft chat`: the training template, the trained stop token, streaming in a real terminal."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_cli


def test_prompt_is_rendered_with_the_training_template(lora_run):
    from transformers import AutoTokenizer

    from sft.after_training.generation import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    assert render_prompt(tokenizer, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tokenizer, "Hi", "alpaca").endswith("### Instruction:\nHi\n\n### Response:\n")


def test_generate_file_and_prompts_agree(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Uppercase: abc\nUppercase: tiny model\n")
    out = tmp_path / "out.jsonl"
    run_cli("generate", tiny_model, "--file", prompts, "-o", out, "--max-new-tokens", 7, check=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Uppercase: abc", "Uppercase: tiny model"]
    single = run_cli("generate", tiny_model, "--prompt", "Uppercase: tiny model", "--max-new-tokens", 7, check=True)
    assert single.stdout.rstrip("\n") == rows[1]["completion"] and rows[1]["completion"]


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by .ci/run")
def test_chat_streams_answers_in_a_terminal(tiny_model, tmp_path):
    # What the model must print: greedy answers for the same conversation, computed in-process.
    from sft.after_training.generation import generate, load

    loaded = load(str(tiny_model))
    history, expected = [], []
    for message in ("hello", "and again"):
        history.append({"role": "user", "content": message})
        text = loaded.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        (answer,) = generate(loaded.model, loaded.tokenizer, [text], loaded.generation_config, max_new_tokens=10)
        history.append({"role": "assistant", "content": answer})
        expected.append(answer)

    session = f"sft-chat-{tmp_path.name}"
    command = f"{sys.executable} -m sft.cli chat {tiny_model} --max-new-tokens 10 2>/dev/null"
    tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", "-c", str(REPO), command)
    try:
        screen = wait_for(session, "you>")
        tmux("send-keys", "-t", session, "hello", "Enter")
        screen = wait_for(session, "you>", count=2)
        tmux("send-keys", "-t", session, "and again", "Enter")
        screen = wait_for(session, "you>", count=3)
        # capture-pane drops trailing spaces, so "model> " with an empty answer reads "model>".
        answers = [line[len("model> "):] for line in screen.splitlines() if line.startswith("model>")]
        assert all(expected) and answers == [a.rstrip() for a in expected]
        tmux("send-keys", "-t", session, "/exit", "Enter")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)


def wait_for(session, text, count=1, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if screen.count(text) >= count:
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{text!r} x{count} never appeared:\n{screen}")
