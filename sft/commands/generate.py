"""`sft generate MODEL --prompt TEXT | --file FILE`: answers with the run's own template and generation config."""

import click


@click.command()
@click.argument("model")
@click.option("--prompt", "prompts", multiple=True, help="A user message (repeatable).")
@click.option("--file", "file", default=None,
              help="A JSONL/JSON/CSV file of rows (prompt, messages, instruction or text) or a .txt file with one "
                   "prompt per line.")
@click.option("-o", "--output", default=None, help="Write {prompt, completion} rows to this JSONL file.")
@click.option("--max-new-tokens", default=128, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--sample/--greedy", default=None, help="Sample or decode greedily (default: the generation config).")
@click.option("--temperature", type=float, default=None)
@click.option("--base", default=None, help="Base model for an adapter, instead of the one its config names.")
@click.option("--dtype", default=None, help="Load weights in this dtype (float32, bfloat16, float16).")
def command(model, prompts, file, output, max_new_tokens, batch_size, sample, temperature, base, dtype):
    """Generate answers from MODEL (a model folder, a run's output_dir or a LoRA adapter), rendering each prompt
    with the chat template the model was trained with and stopping on its trained end-of-turn token."""
    import json
    from pathlib import Path

    from sft.errors import UserError
    from sft.after_training.generation import generate, load, quiet, render_prompt

    quiet()
    if bool(prompts) == bool(file):
        raise UserError("give --prompt TEXT (one or more) or --file FILE")
    loaded = load(model, dtype=dtype, base=base)
    if file:
        shown, texts = read_prompts(file, loaded)
    else:
        shown = list(prompts)
        texts = [render_prompt(loaded.tokenizer, p, loaded.instruction_template) for p in prompts]
    overrides = {}
    if sample is not None:
        overrides["do_sample"] = sample
    if temperature is not None:
        overrides["temperature"] = temperature
    answers = generate(loaded.model, loaded.tokenizer, texts, loaded.generation_config,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, **overrides)
    rows = [{"prompt": p, "completion": a} for p, a in zip(shown, answers)]
    if output:
        from sft.io import write_jsonl

        write_jsonl(Path(output), rows)
        click.echo(f"sft: {len(rows)} completions written to {output}", err=True)
    else:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False) if len(rows) > 1 else row["completion"])


def read_prompts(file, loaded):
    """(prompts as shown, prompt texts) from a text file (one per line) or a data file of any sft format."""
    from pathlib import Path

    from sft.errors import UserError
    from sft.after_training.generation import prompt_and_reference, prompt_text, render_prompt

    path = Path(file)
    if not path.is_file():
        raise UserError(f"{file}: file not found")
    if path.suffix == ".txt":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return lines, [render_prompt(loaded.tokenizer, line, loaded.instruction_template) for line in lines]
    from sft.data.formats import detect_format, normalise
    from sft.data.sources import load_source

    raw = load_source(str(path))
    columns = set(raw.column_names)
    prompts_only = columns >= {"prompt"} and not columns & {"completion", "response"}  # no answers
    fmt = None if prompts_only or len(raw) == 0 else detect_format(raw.column_names, source=file)
    shown, texts = [], []
    for index, row in enumerate(raw):
        if prompts_only:
            prompt = row["prompt"]  # prompts only, no answers: render as a user message
            if not prompt:
                raise UserError(f"{file}: row {index + 1}: 'prompt' is missing or empty")
            shown.append(prompt if isinstance(prompt, str) else prompt[-1]["content"])
            texts.append(render_prompt(loaded.tokenizer, prompt, loaded.instruction_template))
            continue
        try:
            example = normalise(row, fmt, loaded.instruction_template)
        except ValueError as err:
            raise UserError(f"{file}: row {index + 1}: {err}") from None
        prompt, _ = prompt_and_reference(example)
        shown.append(prompt if isinstance(prompt, str) else prompt[-1]["content"])
        texts.append(prompt_text(loaded.tokenizer, prompt))
    return shown, texts
