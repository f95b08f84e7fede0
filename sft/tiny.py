"""Tiny models of a real architecture (Llama) with their own tokenizer and chat template, built from code.

Nothing is downloaded: tests, the quickstart and the benchmarks use these instead of Hub models."""

from pathlib import Path

# ChatML: the special tokens below are single tokens of the tiny tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
# Printable ASCII plus newline and tab: every character the quickstart data and the tests use.
CHARACTERS = [chr(c) for c in range(32, 127)] + ["\n", "\t"]


def build_tokenizer(kind: str = "char", chat_template: str | None = CHATML_TEMPLATE, corpus=None):
    """A fast tokenizer made with `tokenizers`.

    kind="char": one token per character (easy to learn, easy to read in tests).
    kind="bpe": byte-level BPE trained on `corpus`, whose merges cross template boundaries like real tokenizers'.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "char":
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        backend.decoder = decoders.Fuse()
    elif kind == "bpe":
        backend = Tokenizer(models.BPE(unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        backend.train_from_iterator(corpus or _default_corpus(), trainer=trainer)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: use 'char' or 'bpe'")

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _default_corpus():
    words = "the a model learns to answer questions user assistant system hello world convert upper case".split()
    return [" ".join(words[i:] + words[:i]) + "\n" for i in range(len(words))] * 20


def build_model_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **overrides,
    )


def build_tiny_model(
    output_dir, kind: str = "char", hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0
) -> Path:
    """Save a randomly initialised tiny Llama with its tokenizer and chat template as an ordinary model folder."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(kind)
    config = build_model_config(len(tokenizer), hidden_size=hidden_size, layers=layers, heads=heads)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
