"""Which tokens are trained: render, tokenize and mask normalised examples into `input_ids` and `labels`.

plan: the template, stop tokens and closer of one tokenizer; spans: the definition of the trained text, turn by
turn, and how turns share examples; tokenize: tokens and labels in batches; cache: the on-disk cache key;
summary: rows kept, statistics, problems. The names below are what the rest of sft uses."""

from sft.masks.cache import cache_root
from sft.masks.plan import IGNORE, MaskError, MaskPlan, generation_stop_tokens, plan_masks, special_tokens
from sft.masks.spans import FALLBACKS, end_of_turn_token
from sft.masks.summary import column, describe_bad_rows, split_note, summarise
from sft.masks.tokenize import COLUMNS, Tokenized, encode_batch, tokenize_all, tokenize_dataset

__all__ = ["COLUMNS", "FALLBACKS", "IGNORE", "MaskError", "MaskPlan", "Tokenized", "cache_root", "column",
           "describe_bad_rows", "encode_batch", "end_of_turn_token", "generation_stop_tokens", "plan_masks",
           "special_tokens", "split_note", "summarise", "tokenize_all", "tokenize_dataset"]
