"""Caption stage: DataComp/LAION caption heuristics on word and character counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.stage import MapStage, StageConfig, Verdict


class CaptionConfig(StageConfig):
    """Parameters of the caption stage.

    DataComp basic keeps captions with more than 2 words and more than 5 characters:
    min_words 3, min_chars 6. LAION-5B keeps alt-text of at least 5 characters: min_chars 5.
    """

    min_words: int = Field(0, ge=0, description="at least this many whitespace-separated words")
    min_chars: int = Field(0, ge=0, description="at least this many characters (after stripping)")
    max_chars: int | None = Field(None, gt=0, description="at most this many characters")


class Caption(MapStage):
    """Reject empty or whitespace-only captions, too few words or characters, and over-long captions."""

    name = "caption"
    Config = CaptionConfig
    reads = ("text",)
    reasons = ("empty_caption", "too_few_words", "too_few_chars", "caption_too_long")

    def process(self, table: pa.Table) -> Verdict:
        cfg = self.config
        verdict = Verdict(table)
        text = table.column("text")
        # Arrow's Unicode whitespace is Python's str.isspace (checked over every code point in the tests)
        stripped = pc.utf8_trim_whitespace(text.fill_null(""))
        chars = pc.utf8_length(stripped).to_numpy(zero_copy_only=False)
        empty = chars == 0
        if empty.any():  # the ledger shows the caption as Python writes it ('None', '  ')
            rows = np.flatnonzero(empty)
            shown = np.full(table.num_rows, None, dtype=object)
            shown[rows] = [repr(t) for t in text.take(pa.array(rows)).to_pylist()]
            verdict.reject_where(empty, "empty_caption", shown)
        if cfg.min_words > 1:  # split no further than needed: a caption of fewer words is split whole
            words = pc.list_value_length(pc.utf8_split_whitespace(stripped, max_splits=cfg.min_words - 1))
            words = words.to_numpy(zero_copy_only=False)
            verdict.reject_where(words < cfg.min_words, "too_few_words", words)
        verdict.reject_where(chars < cfg.min_chars, "too_few_chars", chars)
        if cfg.max_chars is not None:
            verdict.reject_where(chars > cfg.max_chars, "caption_too_long", chars)
        return verdict
