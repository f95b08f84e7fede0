"""Which tokens are trained: render, tokenize and mask normalised examples into `input_ids` and `labels`.

plan: the template, stop tokens and closer of one tokenizer; spans: the definition of the trained text, turn by
turn, and how turns share examples; content: a message's text, reasoning and tool calls; skeleton: the same
examples from one rendering per conversation shape; tokenize: tokens and labels in batches; cache: the on-disk cache
key; summary: rows kept, statistics, problems."""
