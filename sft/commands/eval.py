"""`sft eval MODEL_OR_RUN [--data FILE | --recipe RECIPE] [--tasks T1,T2 [--include-path DIR]] [--json]`:
perplexity, generation metrics, and lm-evaluation-harness tasks."""

import click

from sft.after_training.evaluation import METRICS as METRIC_NAMES  # standard library only: --help stays instant


@click.command()
@click.argument("model_or_run")
@click.option("--data", "data_file", help="Eval data file (chat, instruction, prompt/completion or text rows).")
@click.option("--recipe", help="Use this recipe's eval split (default: the run's own recipe.yaml).")
@click.option("--metrics", default=None,
              help=f"Comma-separated subset of {', '.join(METRIC_NAMES)}. Default: perplexity, plus the "
                   "generation metrics when the rows have answers.")
@click.option("--tasks", default=None, help="lm-evaluation-harness tasks, comma-separated (needs lm-eval: the eval "
                                           "extra).")
@click.option("--include-path", type=click.Path(), default=None,
              help="Folder of lm-eval task YAML files (e.g. dataset_path: json with local data_files), for --tasks.")
@click.option("--base", default=None, help="Base model for an adapter, instead of the one its config names.")
@click.option("--dtype", default=None, help="Load weights in this dtype (float32, bfloat16, float16).")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N rows.")
@click.option("-o", "--output", default=None,
              help="Predictions file (JSONL). Default: MODEL_OR_RUN/eval/predictions.jsonl.")
@click.option("--case-sensitive", is_flag=True,
              help="exact_match counts case too (only surrounding and repeated whitespace are ignored).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
def command(model_or_run, data_file, recipe, metrics, tasks, include_path, base, dtype, max_new_tokens, batch_size,
            limit, output, case_sensitive, as_json):
    """Evaluate a model, a run's output_dir or a LoRA adapter (applied to its base, not merged) on held-out data.

    Perplexity is computed on the tokens the run trains (rendered and masked as in training). Generation
    metrics use the run's chat template and generation config (which stops on the trained end-of-turn token),
    greedy, batched with left padding. A row may carry `expected` (a string or a list) for `contains`;
    otherwise the reference answer is used. Every prompt, reference and prediction goes to the predictions file.

    --tasks runs lm-evaluation-harness tasks on the same loaded model (--limit: the first N documents of each).
    Offline, define tasks in YAML files with local data (dataset_path: json, dataset_kwargs: {data_files: ...};
    relative paths are from the current directory) and pass their folder with --include-path."""
    import json
    from pathlib import Path

    from sft.errors import UserError
    from sft.after_training.evaluation import (
        GENERATION_METRICS,
        check_lm_eval,
        check_metric_fields,
        generation_scores,
        lm_eval_task_manager,
        lm_eval_tasks,
        perplexity,
        read_eval_rows,
    )
    from sft.io import write_jsonl
    from sft.after_training.generation import load, model_folder, quiet, run_recipe_values

    quiet()
    if data_file and recipe:
        raise UserError("give either --data or --recipe, not both")
    if include_path and not tasks:
        raise UserError("--include-path is the folder of --tasks YAML files: pass --tasks too")
    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else []
    if tasks and not task_list:
        raise UserError("--tasks: no task names; give comma-separated lm-eval task names")
    if task_list:
        check_lm_eval()  # before reading any data
    wanted = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    for name in wanted or []:
        if name not in METRIC_NAMES:
            raise UserError(f"--metrics: unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    folder = model_folder(model_or_run)
    run_values = run_recipe_values(folder)
    instruction_template = run_values.get("instruction_template") or "chat"

    expected = None
    if data_file:
        rows, expected, fmt = read_eval_rows(data_file, instruction_template)
        source = data_file
    elif recipe or (run_values and not tasks):
        rows, fmt, source = recipe_eval_rows(recipe, folder)
    elif tasks:
        rows = None  # lm-evaluation-harness tasks bring their own data
    else:
        raise UserError(f"{model_or_run}: no eval data: pass --data FILE or --recipe RECIPE")
    if rows is not None:
        rows = rows[:limit] if limit else rows
        expected = (expected or [None] * len(rows))[:len(rows)]
        has_answers = fmt != "text"
        if wanted is None:
            wanted = ["perplexity", *(GENERATION_METRICS if has_answers else ())]
        check_metric_fields(wanted, rows, source)

    manager = lm_eval_task_manager(task_list, include_path) if task_list else None  # unknown tasks fail before loading
    loaded = load(model_or_run, dtype=dtype, base=base)
    for note in loaded.notes:
        click.echo(f"sft: {note}", err=True)
    result = {"model": str(loaded.path), **({"base": loaded.base} if loaded.base else {})}
    if rows is not None:
        result.update({"data": source, "rows": len(rows)})
        if "perplexity" in wanted:
            result.update(perplexity(loaded.model, loaded.tokenizer, rows, run_values.get("loss_mode"),
                                     run_values.get("max_length"), batch_size))
        if any(m in GENERATION_METRICS for m in wanted):
            scores, records = generation_scores(loaded, rows, expected, wanted, max_new_tokens, batch_size,
                                                case_sensitive)
            result.update(scores)
            target = Path(output) if output else loaded.path / "eval" / "predictions.jsonl"
            write_jsonl(target, records)
            result["predictions"] = str(target)
    if tasks:
        result["lm_eval"] = lm_eval_tasks(loaded, task_list, manager, batch_size, limit)
    if as_json:
        click.echo(json.dumps(result))
        return
    shown = {k: v for k, v in result.items() if k != "lm_eval"}
    shown.update({f"{task}/{metric}": value for task, values in result.get("lm_eval", {}).items()
                  for metric, value in values.items()})
    for key, value in shown.items():
        click.echo(f"{key:>12}: {value:.4f}" if isinstance(value, float) else f"{key:>12}: {value}")


def recipe_eval_rows(recipe_address, folder):
    """The eval split of a recipe (or of the run's own resolved recipe), as normalised rows."""
    from sft.data.prepare import load_recipe_data
    from sft.errors import UserError
    from sft.recipe.load import load_recipe

    address = recipe_address or str(folder / "recipe.yaml" if (folder / "recipe.yaml").is_file()
                                    else folder.parent / "recipe.yaml")
    recipe = load_recipe(address)
    _, eval_rows, info = load_recipe_data(recipe)
    if eval_rows is None or len(eval_rows) == 0:
        raise UserError(f"{address}: the recipe has no eval split; pass --data FILE")
    return [dict(row) for row in eval_rows], info["format"], f"{address} (eval split)"
