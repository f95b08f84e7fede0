"""Everything the trainer receives: the recipe's data read, mixed and split (one pipeline, also what `sft eval
--recipe` evaluates on), then rendered, tokenized and masked through sft.masks. `sft train`, `sft preview` and
`sft check` all go through `prepare_data`; under a distributed launch it runs once per node (sft.data.node)."""

from dataclasses import dataclass

from sft.data.formats import default_loss_mode
from sft.data.mixture import recipe_sources
from sft.data.rows import BadRow, SourceRows, bad_rows, no_row_fits, read_source, read_sources
from sft.data.prepared import PreparedData
from sft.data.split import Split, decoded, examples_only, mix, split_eval, without
from sft.data.sources import local_data_files
from sft.errors import UserError


def recipe_tokenizer(recipe):
    """The run's tokenizer with the recipe's chat template set, as `sft train` loads it (no model is loaded)."""
    from sft.templates.chat import apply_template
    from sft.model import check_model_source, load_tokenizer

    check_model_source(recipe)
    tokenizer = load_tokenizer(recipe)
    apply_template(tokenizer, recipe)
    return tokenizer



@dataclass
class RecipeData:
    """The recipe's rows before tokenizing: each source read, the mixture, and its train/eval split."""

    parts: list[SourceRows]
    split: Split
    bad: list[BadRow]
    notes: list[str]


def read_mix_split(recipe, defer_normalising: bool = False) -> RecipeData:
    """Read every source, mix, and split off the eval data: test_split_size (exact duplicates removed first), or
    with evaluation asked for and no test_split_size, the source's own `dataset_test_split` split.

    defer_normalising: when there is one source and nothing is mixed or split off, its rows are left raw and the
    tokenizing pass normalises them (`SourceRows.reader`): one pass over the data instead of two."""
    sources, test_size, seed, notes = recipe_sources(recipe)
    evaluating = getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy) not in ("no", None)
    if (defer_normalising and len(sources) == 1 and test_size is None and not evaluating
            and sources[0].fraction is None and sources[0].weight is None):
        part = read_sources(sources, recipe, normalise_now=False)[0]
        split = Split(part.dataset if part.reader else examples_only(part.dataset), None)
        return RecipeData([part], split, [] if part.reader else part.bad, notes)
    parts = read_sources(sources, recipe)
    bad = [b for part in parts for b in part.bad]
    rows = mix(parts, seed)
    if test_size is not None:
        split = split_eval(rows, test_size, seed, recipe.source)
    elif evaluating:
        split = eval_split_from_source(recipe, sources, rows, bad)
    else:
        split = Split(examples_only(rows), None)
    return RecipeData(parts, split, bad, notes)


def eval_split_from_source(recipe, sources, rows, bad) -> Split:
    """Evaluation requested without test_split_size: the source's own `dataset_test_split` split, without the
    examples it shares with the training rows."""
    name = recipe.script.dataset_test_split
    if len(sources) != 1 or local_data_files(sources[0].path) is not None:
        strategy = getattr(recipe.training.eval_strategy, "value", recipe.training.eval_strategy)
        raise UserError(f"{recipe.source}: eval_strategy is {strategy} but there is no eval "
                        "data; set test_split_size (a fraction such as 0.05, or a number of examples)")
    part = read_source(sources[0], recipe, split=name)
    bad += part.bad
    return without(rows, part.dataset)


def prepare_data(recipe, tokenizer, limit: int | None = None, strict: bool = True) -> PreparedData:
    """Read every source, validate and normalise every row, split off eval data, then render, tokenize and mask.
    Under a distributed launch the local main process of each node prepares and the other ranks read its result.

    strict: raise the first problem as a UserError (training); otherwise return the problems (sft check).
    limit: only the first `limit` training examples are tokenized, and nothing is cached (sft preview)."""
    from sft.data.node import once_per_node
    from sft.data.streaming import prepare_streaming, wants_streaming

    if wants_streaming(recipe):  # read, checked and masked as training reads it (on every rank)
        return prepare_streaming(recipe, tokenizer, limit=limit, strict=strict)
    return once_per_node(lambda: prepare_here(recipe, tokenizer, limit, strict))


def prepare_here(recipe, tokenizer, limit: int | None = None, strict: bool = True) -> PreparedData:
    import numpy as np

    from sft.templates.chat import check_has_template
    from sft.masks.plan import generation_stop_tokens, plan_masks
    from sft.masks.spans import FALLBACKS
    from sft.masks.summary import column_array, describe_bad_rows, summarise, summary_notes
    from sft.masks.tokenize import tokenize_all

    notes = []
    loss_mode = recipe.sft.loss_mode  # TRL's loss switches were read as loss modes by sft/recipe/finalize.py
    if recipe.sft.mask_fallback not in FALLBACKS:
        raise UserError(f"{recipe.source}: mask_fallback must be one of {', '.join(FALLBACKS)}")
    data = read_mix_split(recipe, defer_normalising=limit is None)
    notes += data.notes
    parts, problems = data.parts, []
    train_set, eval_set = data.split.train, data.split.eval
    if any(p.chat for p in parts):
        check_has_template(tokenizer, recipe.source)
    # Built once (both tokenize_all calls use it): the template, the model's generation stop tokens, the kwargs.
    plan = plan_masks(tokenizer, loss_mode, stop_tokens=generation_stop_tokens(recipe.model.model_name_or_path,
                                                                               tokenizer),
                      template_kwargs=recipe.sft.chat_template_kwargs)
    if limit is not None:
        train_set = train_set.select(range(min(limit, len(train_set))))
        eval_set = None

    settings = dict(tokenizer=tokenizer, loss_mode=loss_mode, max_length=recipe.training.max_length,
                    truncation_mode=recipe.training.truncation_mode, mask_fallback=recipe.sft.mask_fallback,
                    use_cache=recipe.sft.data_cache and limit is None, plan=plan,
                    num_proc=recipe.training.dataset_num_proc)
    tokenized = tokenize_all(train_set, source="training data", reader=parts[0].reader, **settings)
    bad = data.bad
    if parts[0].reader:  # the rows were normalised as they were tokenized: their bad rows come out now
        tokenized = without_bad_rows(tokenized, parts[0], train_set.column_names)
        bad = parts[0].bad
    if bad and not recipe.sft.skip_bad_rows:
        problems.append(describe_bad_rows(bad))
    summary_args = (recipe.sft.skip_bad_rows, recipe.sft.max_dropped_fraction, recipe.training.max_length)
    keep, stats, train_problems = summarise(tokenized, "training data", *summary_args)
    problems += train_problems
    notes += summary_notes("training data", stats)
    eval_final = None
    if eval_set is not None and len(eval_set):
        eval_tokenized = tokenize_all(eval_set, source="eval data", **settings)
        eval_keep, eval_stats, eval_problems = summarise(eval_tokenized, "eval data", *summary_args)
        problems += eval_problems
        notes += summary_notes("eval data", eval_stats)
        eval_final = eval_tokenized.full.select(eval_keep).select_columns(["input_ids", "labels"])
        stats["eval_examples"] = len(eval_keep)
    full = tokenized.full.select(keep)
    kept = np.bincount(column_array(tokenized.full, "source")[keep], minlength=len(parts))
    stats.update({
        "loss_mode": loss_mode or ("/".join(sorted({default_loss_mode(p.format) for p in parts}))),
        "skipped_bad": stats["skipped_bad"] + len(bad),
        "duplicates_removed": data.split.duplicates,
        "sources": [{"name": p.source.label, "format": p.format, "rows": p.rows, "bad": len(p.bad),
                     "examples": int(kept[index])} for index, p in enumerate(parts)],
    })
    if strict and problems:
        raise UserError(problems[0])
    return PreparedData(full.select_columns(["input_ids", "labels"]), eval_final, stats, problems, notes, full,
                        eval_set)


def without_bad_rows(tokenized, part: SourceRows, columns: list[str]):
    """The tokenized rows less those that failed normalising, which become `part.bad`, as the normalising pass
    gives them."""
    from dataclasses import replace

    part.bad, good = bad_rows(tokenized.full)
    if not len(good):
        raise UserError(no_row_fits(part, columns))
    return tokenized if len(good) == len(tokenized.full) else replace(tokenized, full=tokenized.full.select(good))


def load_recipe_data(recipe):
    """(train, eval or None, info) as datasets of normalised rows (dicts), before tokenizing: the same rows and
    the same eval split as training (read_mix_split)."""
    from sft.masks.summary import describe_bad_rows

    data = read_mix_split(recipe)
    if data.bad and not recipe.sft.skip_bad_rows:
        raise UserError(describe_bad_rows(data.bad))
    info = {"format": data.parts[0].format, "skipped": len(data.bad)}
    evaluation = decoded(data.split.eval) if data.split.eval is not None else None
    return decoded(data.split.train), evaluation, info
