"""`sft check RECIPE`: read the recipe, every row of the data, the template and the masks, and say whether the run
would start - without training and without a GPU."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args):
    """Check RECIPE's data as `sft train` would prepare it, and print a summary: examples per source, format,
    token-length percentiles, share of tokens trained, truncated and dropped examples. Exit 0 when the run would
    start, 2 with the reasons when it would not. The tokenized data is cached for the run. The recipe is given as
    to `sft train`: RECIPE or --config RECIPE, or keys alone, then --key value overrides."""
    from sft.recipe.command_line import split_command_line
    from sft.recipe.load import load_recipe

    # The checks `sft train` runs before training, in its order (the recipe first, before the imports below take
    # seconds); the model is built on the meta device.
    loaded = load_recipe(*split_command_line(args))
    from sft.data.prepare import prepare_data, recipe_tokenizer
    from sft.errors import EXIT_BAD_INPUT
    from sft.model import check_against_model, meta_model
    from sft.recipe.finalize import push_request

    push_request(loaded)
    tokenizer = recipe_tokenizer(loaded)
    data = prepare_data(loaded, tokenizer, strict=False)
    if not data.problems:
        check_against_model(loaded, meta_model(loaded))
    for line in summary_lines(data, loaded):
        click.echo(line)
    if data.problems:
        for problem in data.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"The run would not start ({len(data.problems)} problem(s)).", err=True)
        raise SystemExit(EXIT_BAD_INPUT)
    click.echo("OK: the run would start.")


def summary_lines(data, recipe) -> list[str]:
    s = data.stats
    lines = [f"recipe: {recipe.source}"]
    for note in recipe.notes + data.notes:
        lines.append(f"note: {note}")
    for number, source in enumerate(s["sources"], start=1):
        lines.append(f"source {number}: {source['name']}: {source['format']}, {source['rows']:,} rows, "
                     f"{source['examples']:,} training examples, {source['bad']:,} bad rows")
    lines.append(f"loss on: {s['loss_mode']}; masks from {s['masks']}")
    eval_part = f", eval split {s.get('eval_examples', 0):,}" if s.get("eval_examples") else ", no eval split"
    lines.append(f"examples: {s['kept']:,} to train on{eval_part}; {s['duplicates_removed']:,} exact duplicates "
                 f"removed; {s['skipped_bad']:,} bad rows" + (" skipped" if recipe.sft.skip_bad_rows else ""))
    pct = s["length_percentiles"]
    if pct:
        lines.append(f"tokens per example: p50 {pct['p50']:,}, p90 {pct['p90']:,}, p99 {pct['p99']:,}, "
                     f"max {pct['max']:,}")
    lines.append(f"tokens trained: {s['trained_tokens']:,} of {s['tokens']:,} "
                 f"({s['trained_tokens'] / max(s['tokens'], 1):.1%})")
    lines.append(f"max_length {recipe.training.max_length}: {s['truncated']:,} examples truncated, "
                 f"{s['dropped_truncated']:,} dropped (every trained token past max_length)")
    if s.get("fallback"):
        lines.append(f"mask_fallback {recipe.sft.mask_fallback}: used for {s['fallback']:,} examples")
    lines.append("tokenized data: " + {"hit": "reused from the cache", "miss": "cached for the run",
                                       "off": "not cached (data_cache: false)",
                                       "streamed": "not cached (streamed: masked as training reads it)"}[s["cache"]])
    return lines
