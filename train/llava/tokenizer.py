"""Tokenizers: train a byte-level BPE on captions (the tiny LM's), and add the special tokens
the input format needs to any Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IM_START, IM_END, IMAGE, GLOBAL_IMAGE = "<im_start>", "<im_end>", "<image>", "<global_img>"


def region_token(row: int, col: int) -> str:
    """The marker before region (row, col) of an image's grid, 1-based: `<row_1_col_2>`."""
    return f"<row_{row}_col_{col}>"


def special_tokens(max_grid: int) -> list[str]:
    """Every special token of the format for grids up to max_grid x max_grid."""
    regions = [region_token(r, c) for r in range(1, max_grid + 1) for c in range(1, max_grid + 1)]
    return [IM_START, IM_END, IMAGE, GLOBAL_IMAGE, *regions]


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_grid: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` with the format's special tokens in its vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens(max_grid),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return add_special_tokens(PreTrainedTokenizerFast(tokenizer_object=tokenizer), max_grid)


def add_special_tokens(tokenizer: PreTrainedTokenizerFast, max_grid: int) -> PreTrainedTokenizerFast:
    """Add the format's special tokens (those it lacks) to a tokenizer; the caller resizes the
    LM's embeddings to len(tokenizer)."""
    tokenizer.add_tokens(special_tokens(max_grid), special_tokens=True)
    return tokenizer
