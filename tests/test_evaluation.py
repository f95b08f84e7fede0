"""`sft eval`: offline metrics with known values, perplexity against the model's own loss, batched generation
with left padding, adapters evaluated without merging, and the bad-input messages."""

import json
import math

import pytest

from sft.evaluation import contains, corpus_bleu, exact_match, rouge_l
from tests.conftest import REPO, run_cli


def test_text_metrics_known_values():
    assert exact_match("  Paris\n", "paris") == 1.0 and exact_match("Paris.", "Paris") == 0.0
    assert contains("The capital is PARIS.", "Paris") == 1.0
    assert contains("Paris and Rome", ["paris", "berlin"]) == 0.0
    # LCS of "the cat on the mat" in "the cat sat on the mat" is 5: P = 5/5, R = 5/6, F1 = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("a b c", "x y z") == 0.0
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # 7 words against 6 reference words: clipped precisions 6/7 ("the" counts twice at most), 5/6 (all bigrams
    # but "the the"), 3/5, 2/4; no brevity penalty since the prediction is longer.
    expected = 100 * math.exp((math.log(6 / 7) + math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    assert corpus_bleu(["the cat sat on the the mat"], ["the cat sat on the mat"]) == pytest.approx(expected)
    # Shorter prediction: brevity penalty exp(1 - 6/5).
    short = corpus_bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert short == pytest.approx(100 * math.exp(1 - 6 / 5))
    assert corpus_bleu(["completely different"], ["the cat sat"]) == 0.0


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "qa.jsonl"
    lines = (REPO / "recipes" / "data" / "uppercase_heldout.jsonl").read_text().splitlines()[:6]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_perplexity_is_the_models_loss_on_trained_tokens(tiny_model, qa_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    one = tmp_path / "one.jsonl"
    one.write_text(qa_file.read_text().splitlines()[0] + "\n")
    out = run_cli("eval", tiny_model, "--data", one, "--metrics", "perplexity", "--json", check=True)
    result = json.loads(out.stdout)
    # The same example by hand: chat template, loss on the answer and its end-of-turn token only.
    row = json.loads(one.read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}], tokenize=False,
                                           add_generation_prompt=True)
    answer = tokenizer(row["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + answer
    n_prompt = len(ids) - len(answer)
    ids.append(tokenizer.convert_tokens_to_ids("\n"))  # the template's newline after the turn is not trained
    labels = [-100] * n_prompt + answer + [-100]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert result["tokens"] == len(answer)
    assert result["loss"] == pytest.approx(loss, rel=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


def test_batched_left_padded_generation_matches_one_by_one(tiny_model, qa_file, tmp_path):
    one = run_cli("eval", tiny_model, "--data", qa_file, "--batch-size", 1, "--max-new-tokens", 6, "--json",
                  "-o", tmp_path / "one.jsonl", check=True)
    run_cli("eval", tiny_model, "--data", qa_file, "--batch-size", 6, "--max-new-tokens", 6, "--json",
                   "-o", tmp_path / "many.jsonl", check=True)
    rows_one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    rows_many = [json.loads(x) for x in (tmp_path / "many.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows_one] == [r["prediction"] for r in rows_many]
    assert all(r["prediction"] for r in rows_one)  # the random tiny model babbles: a real comparison
    # Every prompt, reference and prediction is in the file, and the summary is their mean.
    qa = [json.loads(x) for x in qa_file.read_text().splitlines()]
    assert [r["reference"] for r in rows_one] == [q["output"] for q in qa]
    assert [r["prompt"][-1]["content"] for r in rows_one] == [q["instruction"] for q in qa]
    summary = json.loads(one.stdout)
    assert summary["rouge_l"] == pytest.approx(sum(r["rouge_l"] for r in rows_one) / len(rows_one))
    assert set(summary) >= {"perplexity", "exact_match", "contains", "rouge_l", "bleu", "predictions"}


def test_adapter_is_evaluated_on_its_base_without_merging(lora_run, tiny_model, qa_file):
    adapter = json.loads(run_cli("eval", lora_run, "--data", qa_file, "--metrics", "perplexity", "--json",
                                 check=True).stdout)
    from sft.evaluation import perplexity, read_eval_rows
    from sft.generation import load

    loaded = load(str(tiny_model))  # the base alone, in this process
    base = perplexity(loaded.model, loaded.tokenizer, read_eval_rows(str(qa_file))[0])
    assert adapter["base"] == str(tiny_model)
    assert adapter["tokens"] == base["tokens"]
    assert adapter["perplexity"] < base["perplexity"]  # the adapter learned something the base does not know
    assert not (lora_run / "model.safetensors").exists()  # nothing merged or written over the adapter


def test_generation_metrics_need_answers(tiny_model, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text('{"text": "just some text"}\n')
    proc = run_cli("eval", tiny_model, "--data", data, "--metrics", "perplexity,exact_match")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {data}: row 1: exact_match need prompt/answer rows (messages ending in an assistant turn, "
        "prompt/completion, or instruction/output), and this row has none; evaluate plain text with --metrics "
        "perplexity")


def test_adapter_whose_base_is_gone(lora_run, tmp_path):
    import shutil

    moved = tmp_path / "adapter"
    shutil.copytree(lora_run, moved, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    proc = run_cli("eval", moved, "--data", REPO / "recipes" / "data" / "uppercase_heldout.jsonl")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {moved}/adapter_config.json: base model {tmp_path}/deleted-base cannot "
                                   "be found; pass --base PATH to the base model folder")


def test_lm_eval_tasks_say_what_to_install(tiny_model):
    # lm_eval is not a dependency; when it is absent the message says how to get it.
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm_eval is installed here")
    except ImportError:
        pass
    proc = run_cli("eval", tiny_model, "--tasks", "hellaswag")
    assert proc.returncode == 2
    assert "needs lm-evaluation-harness, which is not installed: pip install lm-eval" in proc.stderr
