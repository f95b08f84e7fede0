"""`sft chat MODEL`: an interactive conversation, streamed token by token, with the run's own template."""

import click


@click.command()
@click.argument("model")
@click.option("--system", default=None, help="A system message to start the conversation with.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--sample/--greedy", default=None, help="Sample or decode greedily (default: the generation config).")
@click.option("--base", default=None, help="Base model for an adapter, instead of the one its config names.")
@click.option("--dtype", default=None, help="Load weights in this dtype (float32, bfloat16, float16).")
def command(model, system, max_new_tokens, sample, base, dtype):
    """Chat with MODEL (a model folder, a run's output_dir or a LoRA adapter). Each answer streams as it is
    generated. Type /reset to start a new conversation, /exit (or Ctrl-D) to leave."""
    from transformers import TextStreamer

    from sft.errors import UserError
    from sft.after_training.generation import generate, load, quiet

    quiet()
    loaded = load(model, dtype=dtype, base=base)
    if not loaded.tokenizer.chat_template:
        raise UserError(f"{model}: the model has no chat template; use `sft generate` for plain text")
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    overrides = {} if sample is None else {"do_sample": sample}
    click.echo(f"sft chat: {loaded.path} ({'adapter on ' + loaded.base if loaded.base else 'model'}). "
               "/reset starts over, /exit leaves.")
    while True:
        click.echo("you> ", nl=False)  # on stdout: input() would put its prompt on stderr in a terminal
        try:
            message = input()
        except EOFError:
            click.echo()
            return
        if message.strip() in ("/exit", "/quit"):
            return
        if message.strip() == "/reset":
            history = list(start)
            click.echo("(new conversation)")
            continue
        if not message.strip():
            continue
        history.append({"role": "user", "content": message})
        text = loaded.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        click.echo("model> ", nl=False)
        streamer = TextStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        (answer,) = generate(loaded.model, loaded.tokenizer, [text], loaded.generation_config,
                             max_new_tokens=max_new_tokens, batch_size=1, streamer=streamer, **overrides)
        history.append({"role": "assistant", "content": answer})
