"""`sft eval`: offline metrics with known values, perplexity against the model's own loss, batched generation
with left padding, adapters evaluated without merging, lm-evaluation-harness on a local task against the same
scores computed by hand, and the bad-input messages."""

import json
import math
import subprocess
import sys
from importlib.metadata import version

import pytest

from sft.after_training.evaluation import contains, corpus_bleu, exact_match, rouge_l
from tests.conftest import REPO, run_cli, run_cli_in_process

SACREBLEU = version("sacrebleu")


def test_text_metrics_known_values():
    assert exact_match("  Paris\n", "paris") == 1.0 and exact_match("Paris.", "Paris") == 0.0
    assert exact_match(" PLANET\n", "PLANET", case_sensitive=True) == 1.0
    assert exact_match("Planet", "PLANET", case_sensitive=True) == 0.0
    assert contains("The capital is PARIS.", "Paris") == 1.0
    assert contains("Paris and Rome", ["paris", "berlin"]) == 0.0
    # LCS of "the cat on the mat" in "the cat sat on the mat" is 5: P = 5/5, R = 5/6, F1 = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("a b c", "x y z") == 0.0
    # rouge-score's tokenizer keeps lowercased letters and digits only: the full stop does not count (sft's own
    # tokenization counted it as a word and gave 2/3).
    assert rouge_l("Paris.", "paris") == 1.0
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # 7 words against 6 reference words: clipped precisions 6/7 ("the" counts twice at most), 5/6 (all bigrams
    # but "the the"), 3/5, 2/4; no brevity penalty since the prediction is longer.
    expected = 100 * math.exp((math.log(6 / 7) + math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    assert bleu(["the cat sat on the the mat"], ["the cat sat on the mat"]) == pytest.approx(expected)
    # Shorter prediction: brevity penalty exp(1 - 6/5).
    short = bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert short == pytest.approx(100 * math.exp(1 - 6 / 5))
    assert bleu(["completely different"], ["the cat sat"]) == 0.0
    # sacrebleu's default is case-sensitive ("The" is not "the": precisions 5/6, 4/5, 3/4, 2/3), where sft's own
    # tokenization lowercased and gave 100.
    expected = 100 * math.exp((math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)) / 4)
    assert bleu(["The cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(expected)
    assert corpus_bleu(["a"], ["a"])[1] == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{SACREBLEU}"


def bleu(predictions, references):
    return corpus_bleu(predictions, references)[0]


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
    assert summary["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_adapter_is_evaluated_on_its_base_without_merging(lora_run, tiny_model, qa_file):
    adapter = json.loads(run_cli("eval", lora_run, "--data", qa_file, "--metrics", "perplexity", "--json",
                                 check=True).stdout)
    from sft.after_training.evaluation import perplexity, read_eval_rows
    from sft.after_training.generation import load

    loaded = load(str(tiny_model))  # the base alone, in this process
    base = perplexity(loaded.model, loaded.tokenizer, read_eval_rows(str(qa_file))[0])
    assert adapter["base"] == str(tiny_model)
    assert adapter["tokens"] == base["tokens"]
    assert adapter["perplexity"] < base["perplexity"]  # the adapter learned something the base does not know
    assert not (lora_run / "model.safetensors").exists()  # nothing merged or written over the adapter


def test_generation_metrics_need_answers(tiny_model, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text('{"text": "just some text"}\n')
    proc = run_cli_in_process("eval", tiny_model, "--data", data, "--metrics", "perplexity,exact_match")
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
    proc = run_cli_in_process("eval", moved, "--data", REPO / "recipes" / "data" / "uppercase_heldout.jsonl")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {moved}/adapter_config.json: base model {tmp_path}/deleted-base cannot "
                                   "be found; pass --base PATH to the base model folder")


TASKS = REPO / "tests" / "support" / "lm_eval_tasks"


def choice_scores(model, tokenizer, docs):
    """The task's metrics by hand: each choice's log-likelihood after "Uppercase: WORD\nAnswer:" (the choice
    follows a space), the highest one as the answer (acc), and the Brier score of the softmax over the choices."""
    import torch

    correct, brier = [], []
    for doc in docs:
        context = f"Uppercase: {doc['word']}\nAnswer:"
        n_context = len(tokenizer(context)["input_ids"])
        lls = []
        for choice in doc["choices"]:
            ids = tokenizer(context + " " + choice)["input_ids"]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            lls.append(sum(logprobs[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
        probs = torch.softmax(torch.tensor(lls), dim=0)
        correct.append(float(int(torch.argmax(probs)) == doc["label"]))
        brier.append(sum((p - float(i == doc["label"])) ** 2 for i, p in enumerate(probs.tolist())))
    return sum(correct) / len(docs), sum(brier) / len(docs)


def lm_eval_result(model, limit):
    out = run_cli("eval", model, "--tasks", "uppercase_choice", "--include-path", TASKS, "--limit", limit, "--json",
                  cwd=REPO, check=True)  # the task's data_files path is relative to the repository root
    return json.loads(out.stdout)["lm_eval"]["uppercase_choice"]


def test_lm_eval_local_task_scores_the_model(tiny_model):
    pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = lm_eval_result(tiny_model, 4)
    docs = [json.loads(line) for line in (TASKS / "uppercase_choice.jsonl").read_text().splitlines()][:4]
    acc, brier = choice_scores(AutoModelForCausalLM.from_pretrained(tiny_model),
                               AutoTokenizer.from_pretrained(tiny_model), docs)
    assert result["sample_len"] == 4  # --limit
    assert result["acc"] == pytest.approx(acc)
    assert result["brier_score"] == pytest.approx(brier, rel=1e-4)


def test_lm_eval_local_task_scores_an_adapter_without_merging(lora_run, tiny_model):
    pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = lm_eval_result(lora_run, 4)
    docs = [json.loads(line) for line in (TASKS / "uppercase_choice.jsonl").read_text().splitlines()][:4]
    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    _, base_brier = choice_scores(base, tokenizer, docs)
    acc, brier = choice_scores(PeftModel.from_pretrained(base, lora_run).eval(), tokenizer, docs)
    assert result["acc"] == pytest.approx(acc)
    assert result["brier_score"] == pytest.approx(brier, rel=1e-4)
    assert brier != pytest.approx(base_brier, rel=1e-3)  # the adapter was applied: the base alone scores otherwise
    assert not (lora_run / "model.safetensors").exists()  # nothing merged or written over the adapter


def test_lm_eval_unknown_tasks_and_folders(tiny_model, tmp_path):
    pytest.importorskip("lm_eval", reason="the eval extra (lm-eval) is not installed")
    proc = run_cli_in_process("eval", tiny_model, "--tasks", "uppercase_choise", "--include-path", TASKS)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --tasks: unknown task 'uppercase_choise' (closest: uppercase_choice): not in --include-path "
        f"{TASKS} or among lm-eval's tasks; define it in a YAML file and pass its folder with --include-path DIR")
    proc = run_cli_in_process("eval", tiny_model, "--tasks", "uppercase_choice", "--include-path", tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --include-path {tmp_path}/missing: no such directory; give the folder holding the task YAML files")


def test_lm_eval_tasks_say_what_to_install(tiny_model):
    # lm_eval is an optional extra. Here it is made unimportable for one process (a None in sys.modules blocks
    # the import), whether or not it is installed, and the real CLI runs in that process.
    code = ("import sys; sys.modules['lm_eval'] = None; from sft.cli import main; "
            f"main(['eval', {str(tiny_model)!r}, '--tasks', 'hellaswag'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --tasks needs lm-evaluation-harness, which is not installed: pip install lm-eval (its stock tasks "
        "download their datasets from the Hub; local tasks need --include-path)")


def test_eval_data_is_read_as_training_reads_it_and_a_bad_row_is_named_by_file_and_line(tmp_path):
    from sft.after_training.evaluation import read_eval_rows
    from sft.errors import UserError

    data = tmp_path / "eval.jsonl"
    good = {"messages": [{"role": "user", "content": "Uppercase: é b"}, {"role": "assistant", "content": "É B"}]}
    bad = {"messages": [{"role": "wizard", "content": "x"}]}
    data.write_text(json.dumps(good, ensure_ascii=False) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError) as err:
        read_eval_rows(str(data))
    assert str(err.value).startswith(f"{data}:3: ")  # the blank line 2 is skipped, as in training
    data.write_text(json.dumps(good, ensure_ascii=False) + "\n")
    rows, expected, fmt = read_eval_rows(str(data))
    assert fmt == "chat" and expected == [None] and rows[0]["messages"][1]["content"] == "É B"
