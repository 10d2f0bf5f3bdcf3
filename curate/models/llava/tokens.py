"""The input format's special tokens, added to any Hugging Face tokenizer."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

IM_START, IM_END, IMAGE, GLOBAL_IMAGE = "<im_start>", "<im_end>", "<image>", "<global_img>"


def region_token(row: int, col: int) -> str:
    """The marker before region (row, col) of an image's grid, 1-based: `<row_1_col_2>`."""
    return f"<row_{row}_col_{col}>"


def special_tokens(max_grid: int) -> list[str]:
    """Every special token of the format for grids up to max_grid x max_grid."""
    regions = [region_token(r, c) for r in range(1, max_grid + 1) for c in range(1, max_grid + 1)]
    return [IM_START, IM_END, IMAGE, GLOBAL_IMAGE, *regions]


def add_special_tokens(tokenizer: PreTrainedTokenizerFast, max_grid: int) -> PreTrainedTokenizerFast:
    """Add the format's special tokens (those it lacks) to a tokenizer; the caller resizes the
    LM's embeddings to len(tokenizer)."""
    tokenizer.add_tokens(special_tokens(max_grid), special_tokens=True)
    return tokenizer
