"""`sft preview RECIPE [-n N] [--json]`: rendered examples with the trained tokens marked, as the trainer gets them."""

import click

OPEN_MARK, CLOSE_MARK = "⟦", "⟧"


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-n", "count", default=3, show_default=True, help="How many examples to show.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per example: input_ids, labels "
              "(-100 where masked) and more - exactly what the trainer receives, before packing.")
def command(args, count, as_json):
    """Show the first N training examples of RECIPE rendered through its chat template, with trained tokens in
    colour (on a terminal; reasoning and tool calls in their own colours) or between ⟦ ⟧ markers, and per-example
    token counts. The recipe is given as to `sft train` (RECIPE or --config RECIPE, or keys alone), with overrides
    after it. Reads the data and the tokenizer only: no model, no GPU.

    \b
    Trained, for each assistant turn: exactly what the model must generate after the conversation so far is
    rendered with add_generation_prompt=True - its reasoning where the template renders it, its content, its tool
    calls, and the token that ends generation (eos or a generation_config.json stop token). Nothing of system,
    user or tool turns, nothing the generation prompt already holds. Where the template renders earlier turns
    differently (e.g. drops their reasoning), each turn is its own example ("split")."""
    import json

    from sft.recipe.command_line import split_command_line
    from sft.recipe.load import load_recipe

    loaded = load_recipe(*split_command_line(args))  # before the imports below (seconds): a typo is named at once
    from sft.data.prepare import prepare_data, recipe_tokenizer

    tokenizer = recipe_tokenizer(loaded)
    data = prepare_data(loaded, tokenizer, limit=max(count, 0))
    rows = data.train_full
    if as_json:
        for index, row in enumerate(rows):
            click.echo(json.dumps({"example": index + 1, "where": row["where"], "tokens": row["length"],
                                   "trained": row["trained"], "split_part": row["part"],
                                   "input_ids": row["input_ids"], "labels": row["labels"]}))
        return
    show(rows, tokenizer, data.stats)


def runs(ids, labels):
    """[(trained, token ids)]: consecutive tokens grouped by whether they are trained."""
    grouped = []
    for token, label in zip(ids, labels):
        trained = label != -100
        if grouped and grouped[-1][0] == trained:
            grouped[-1][1].append(token)
        else:
            grouped.append((trained, [token]))
    return grouped


STYLES = {0: "bold green", 1: "bold magenta", 2: "bold cyan"}  # answer, reasoning, tool calls
KIND_MARKS = {0: "", 1: "reasoning: ", 2: "tool calls: "}


def segments(row):
    """[(kind, trained, token ids)]: runs of tokens by whether they are trained and what they are (0 answer,
    1 reasoning, 2 tool calls)."""
    kinds = [0] * len(row["input_ids"])
    for start, end, kind in row["parts"]:
        kinds[start:end] = [kind] * (end - start)
    grouped = []
    for token, label, kind in zip(row["input_ids"], row["labels"], kinds):
        key = (kind if label != -100 else 0, label != -100)
        if grouped and grouped[-1][:2] == key:
            grouped[-1][2].append(token)
        else:
            grouped.append((*key, [token]))
    return grouped


def show(rows, tokenizer, stats) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    colour = console.is_terminal and not console.no_color
    legend = ("trained tokens in green, reasoning in magenta, tool calls in cyan" if colour
              else f"trained tokens between {OPEN_MARK} and {CLOSE_MARK}")
    console.print(f"{len(rows)} example(s), loss on {stats['loss_mode']}, masks from {stats['masks']}; {legend}")
    for index, row in enumerate(rows):
        split = (f" · turn {row['part']} of a split conversation (the template renders earlier turns differently)"
                 if row["part"] else "")
        header = (f"── example {index + 1} · {row['where']} · {row['length']} tokens, {row['trained']} trained"
                  f"{split} ")
        console.print(Text(header + "─" * max(0, 78 - len(header)), style="bold" if colour else ""))
        text = Text()
        for kind, trained, ids in segments(row):
            piece = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if colour:
                text.append(piece, style=STYLES[kind] if trained else "dim")
            else:
                text.append(f"{OPEN_MARK}{KIND_MARKS[kind]}{piece}{CLOSE_MARK}" if trained else piece)
        console.print(text)
