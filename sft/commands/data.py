"""`sft data stats|dedupe|split FILE...`: look at and clean data before a run. Inputs are never changed."""

import click


def tokenizer_for(tokenizer_name, recipe):
    """The run's tokenizer with its chat template: from a model folder/name, or from a recipe."""
    from sft.errors import UserError

    if tokenizer_name and recipe:
        raise UserError("give --tokenizer or --recipe, not both")
    if recipe:
        from sft.templates.chat import apply_template
        from sft.model import load_tokenizer
        from sft.recipe.load import load_recipe

        loaded = load_recipe(recipe, adapt_to_hardware=False)
        tokenizer = load_tokenizer(loaded)
        apply_template(tokenizer, loaded)
        return tokenizer
    if tokenizer_name:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(tokenizer_name)
        except OSError as err:
            raise UserError(f"--tokenizer {tokenizer_name}: cannot load: {str(err).splitlines()[0]}") from err
    return None


def output_folder(output, files, what):
    """The folder to write into; a UserError, before anything is written, when -o names an existing file."""
    from pathlib import Path

    from sft.errors import UserError

    folder = Path(output) if output else Path(files[0]).parent / f"{Path(files[0]).stem}.{what}"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {output or folder}: is a file; -o names a folder for the {what} files "
                        f"(for example -o {folder.with_suffix('')}.{what})")
    return folder


tokenizer_options = [
    click.option("--tokenizer", "tokenizer_name", default=None, help="Model folder or name whose tokenizer counts."),
    click.option("--recipe", default=None, help="Use the tokenizer and chat template of this recipe's model."),
]


def with_tokenizer_options(fn):
    for option in reversed(tokenizer_options):
        fn = option(fn)
    return fn


@click.group()
def command():
    """Data curation: token-length statistics, duplicate removal and filters, train/validation/test splits.
    Each writes new files (JSONL) and never changes its input."""


@command.command()
@click.argument("files", nargs=-1, required=True)
@with_tokenizer_options
@click.option("-o", "--output", default=None, help="Folder for stats.json and token_lengths.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(files, tokenizer_name, recipe, output, as_json):
    """Token-length percentiles and a histogram per file, rendered as training renders them."""
    import json

    from sft.after_training.curation import stats as compute
    from sft.errors import UserError
    from sft.after_training.generation import quiet

    quiet()
    out_dir = output_folder(output, files, "stats")
    tokenizer = tokenizer_for(tokenizer_name, recipe)
    if tokenizer is None:
        raise UserError("sft data stats counts tokens: pass --tokenizer MODEL or --recipe RECIPE")
    report = compute(list(files), tokenizer, out_dir)
    if as_json:
        click.echo(json.dumps(report))
        return
    for path, values in report.items():
        shown = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        click.echo(f"{path}: {shown}")
    click.echo(f"sft: stats.json and token_lengths.png written to {out_dir}")


@command.command()
@click.argument("files", nargs=-1, required=True)
@with_tokenizer_options
@click.option("-o", "--output", default=None, help="Folder for the cleaned files (one per input) and dedupe.json.")
@click.option("--threshold", default=0.8, show_default=True,
              help="Near-duplicate Jaccard similarity of 5-character shingles; 1.0 removes exact duplicates only.")
@click.option("--keep-empty", is_flag=True, help="Keep examples whose answer is empty.")
@click.option("--min-tokens", type=int, default=None, help="Drop examples shorter than this (needs a tokenizer).")
@click.option("--max-tokens", type=int, default=None, help="Drop examples longer than this (needs a tokenizer).")
def dedupe(files, tokenizer_name, recipe, output, threshold, keep_empty, min_tokens, max_tokens):
    """Remove exact and near duplicates within and across FILES, empty answers and out-of-bounds lengths.

    An example already seen in an earlier file is dropped from the later one: list eval files first, as in
    `sft data dedupe eval.jsonl train.jsonl`, so train and eval share no example."""
    from sft.after_training.duplicates import dedupe as run
    from sft.after_training.generation import quiet

    quiet()
    if not 0 < threshold <= 1:
        from sft.errors import UserError

        raise UserError(f"--threshold {threshold}: must be in (0, 1]")
    out_dir = output_folder(output, files, "deduped")
    tokenizer = tokenizer_for(tokenizer_name, recipe)
    report = run(list(files), out_dir, threshold, not keep_empty, min_tokens, max_tokens, tokenizer)
    for path, counts in report.items():
        dropped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()
                            if k not in ("rows", "kept", "output") and v)
        click.echo(f"{path}: kept {counts['kept']} of {counts['rows']}{' (' + dropped + ')' if dropped else ''} "
                   f"-> {counts['output']}")


@command.command()
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", default=None, help="Folder for train/validation/test.jsonl and split.json.")
@click.option("--ratios", default="80/10/10", show_default=True, help="train/validation[/test] proportions.")
@click.option("--seed", default=0, show_default=True)
def split(files, output, ratios, seed):
    """Deterministic splits: exact duplicates removed, a seeded shuffle, cut by --ratios."""
    from sft.after_training.splits import SPLIT_NAMES, parse_ratios
    from sft.after_training.splits import split as run
    from sft.after_training.generation import quiet

    quiet()
    out_dir = output_folder(output, files, "split")
    report = run(list(files), out_dir, parse_ratios(ratios), seed)
    parts = ", ".join(f"{name} {report[name]['rows']}" for name in SPLIT_NAMES if name in report)
    click.echo(f"sft: {report['rows']} rows ({report['exact_duplicates_removed']} exact duplicates removed): {parts} "
               f"-> {out_dir}")
