"""Evaluating a trained model on held-out data: perplexity on the trained tokens, and generation metrics on
prompt/answer data (exact match, contains; ROUGE-L by rouge-score and corpus BLEU by sacrebleu, offline, so the
scores compare with published ones), with a file holding every prompt, reference and prediction.
lm-evaluation-harness tasks when that package is installed (the `eval` extra), including local YAML tasks over
local data files."""

import math
from functools import lru_cache
from pathlib import Path

from sft.errors import UserError

GENERATION_METRICS = ("exact_match", "contains", "rouge_l", "bleu")
METRICS = ("perplexity", *GENERATION_METRICS)


# ---------------------------------------------------------------------------------------------------------------
# Text metrics


def normalise_answer(text: str) -> str:
    """Case, surrounding and repeated whitespace do not count."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str, case_sensitive: bool = False) -> float:
    if case_sensitive:  # only surrounding and repeated whitespace do not count
        return float(prediction.split() == reference.split())
    return float(normalise_answer(prediction) == normalise_answer(reference))


def contains(prediction: str, expected: str | list[str]) -> float:
    """1.0 when every expected string appears in the prediction (case-insensitive): "expected in response"."""
    wanted = [expected] if isinstance(expected, str) else list(expected)
    return float(all(normalise_answer(e) in normalise_answer(prediction) for e in wanted))


@lru_cache(maxsize=1)
def rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """rouge-score's ROUGE-L F-measure, the figure papers report as ROUGE-L. Its default tokenizer keeps lowercased
    ASCII letters and digits only (no stemming): text in other scripts scores 0."""
    return rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def corpus_bleu(predictions: list[str], references: list[str]) -> tuple[float, str]:
    """(sacrebleu's corpus BLEU in [0, 100], its signature): one reference per prediction, sacrebleu's defaults
    (13a tokenization, mixed case, exponential smoothing). The signature says how the score was computed, so it
    can be compared with a published one."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    return bleu.corpus_score(predictions, [references]).score, str(bleu.get_signature())


# ---------------------------------------------------------------------------------------------------------------
# Data


def read_eval_rows(path: str, instruction_template: str = "chat") -> tuple[list[dict], list, str]:
    """(normalised rows, the raw `expected` value of each row or None, format) from a data file, read as training
    reads it (sft.data.rows.read_file); a row that cannot be normalised is named."""
    from sft.data.rows import read_file

    data = read_file(path, instruction_template)
    if len(data) == 0:
        raise UserError(f"{path}: the file has no rows")
    rows, expected = [], []
    for row in data.rows():
        if row.example is None:
            raise UserError(f"{row.where}: {row.reason}")
        rows.append(row.example)
        expected.append(row.raw.get("expected"))
    return rows, expected, data.format


def check_metric_fields(metrics: list[str], rows: list[dict], source: str) -> None:
    """Generation metrics need a prompt and an answer in every row; say which rows lack them."""
    from sft.after_training.generation import prompt_and_reference

    wanted = [m for m in metrics if m in GENERATION_METRICS]
    if not wanted:
        return
    for index, row in enumerate(rows):
        if prompt_and_reference(row)[1] is None:
            raise UserError(
                f"{source}: row {index + 1}: {', '.join(wanted)} need prompt/answer rows (messages ending in an "
                "assistant turn, prompt/completion, or instruction/output), and this row has none; evaluate "
                "plain text with --metrics perplexity"
            )


# ---------------------------------------------------------------------------------------------------------------
# Model metrics


def perplexity(model, tokenizer, rows: list[dict], loss_mode: str | None = None, max_length: int | None = None,
               batch_size: int = 8) -> dict:
    """exp(mean negative log-likelihood) over every trained token (the tokens the run's loss counts), pooled
    over the whole set, rendered and masked exactly as in training."""
    import torch
    from datasets import Dataset

    from sft.masks.plan import IGNORE
    from sft.masks.tokenize import tokenize_dataset

    # loss_mode None: each example's default, as in training (assistant turns, completions, or all of a text).
    encoded, _ = tokenize_dataset(Dataset.from_list(rows), tokenizer, loss_mode, max_length=max_length,
                                  source="eval data")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            width = max(len(ids) for ids in batch["input_ids"])
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch["input_ids"]], device=device)
            labels = torch.tensor([x + [IGNORE] * (width - len(x)) for x in batch["labels"]], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=IGNORE, reduction="sum")
            total_nll += nll.item()
            total_tokens += int((target != IGNORE).sum())
    mean = total_nll / max(total_tokens, 1)
    return {"perplexity": math.exp(mean) if mean < 700 else float("inf"), "loss": mean, "tokens": total_tokens}


def generation_scores(loaded, rows: list[dict], expected: list, metrics: list[str], max_new_tokens: int,
                      batch_size: int, case_sensitive: bool = False) -> tuple[dict, list[dict]]:
    """(corpus metrics, one record per row with prompt, reference, prediction and its scores)."""
    from sft.after_training.generation import generate, prompt_and_reference, prompt_text

    pairs = [prompt_and_reference(row) for row in rows]
    texts = [prompt_text(loaded.tokenizer, prompt) for prompt, _ in pairs]
    predictions = generate(loaded.model, loaded.tokenizer, texts, loaded.generation_config,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=False)
    records = []
    for (prompt, reference), text, prediction, wanted in zip(pairs, texts, predictions, expected):
        record = {"prompt": prompt, "reference": reference, "prediction": prediction}
        if "exact_match" in metrics:
            record["exact_match"] = exact_match(prediction, reference, case_sensitive)
        if "contains" in metrics:
            record["contains"] = contains(prediction, wanted if wanted else reference)
        if "rouge_l" in metrics:
            record["rouge_l"] = rouge_l(prediction, reference)
        records.append(record)
    scores = {m: sum(r[m] for r in records) / len(records) for m in ("exact_match", "contains", "rouge_l")
              if m in metrics}
    if "bleu" in metrics:
        scores["bleu"], scores["bleu_signature"] = corpus_bleu(predictions, [r for _, r in pairs])
    return scores, records


def check_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("--tasks needs lm-evaluation-harness, which is not installed: pip install lm-eval "
                        "(its stock tasks download their datasets from the Hub; local tasks need --include-path)")


def lm_eval_task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's TaskManager knowing lm-eval's own tasks and the YAML tasks under include_path. Unknown task names
    fail here, before any model is loaded."""
    check_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: no such directory; give the folder holding the task YAML "
                        "files")
    if include_path is not None:
        # Indexing lm-eval's ~200 task folders takes seconds: skip it when the local folder has every task.
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in local.all_tasks or Path(task).is_file() for task in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks and not Path(task).is_file()]
    if unknown:
        import difflib

        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hints.append(f"{task!r}" + (f" (closest: {', '.join(close)})" if close else ""))
        where = f"in --include-path {include_path} or " if include_path else ""
        raise UserError(f"--tasks: unknown task {'; '.join(hints)}: not {where}among lm-eval's tasks; define it in "
                        "a YAML file and pass its folder with --include-path DIR")
    return manager


def lm_eval_tasks(loaded, tasks: list[str], manager, batch_size: int, limit: int | None) -> dict:
    """lm-evaluation-harness on the loaded model (adapter applied, not merged): {task: {metric: value}}, with
    lm-eval's "metric,filter" keys shortened to "metric" for its default filter ("none")."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    try:
        results = lm_eval.simple_evaluate(model=HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer,
                                                     batch_size=batch_size),
                                          tasks=tasks, task_manager=manager, limit=limit)
    except ConnectionError as err:  # stock tasks fetch their datasets from the Hub
        raise UserError(f"--tasks: a task's dataset cannot be downloaded ({err}); on a machine without the Hub, "
                        "define the task in a YAML file with dataset_path: json and dataset_kwargs: {data_files: "
                        "...} pointing at local files, and pass its folder with --include-path DIR") from None
    return {task: {key.removesuffix(",none"): value for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
            for task, values in results["results"].items()}

