"""Caption stage: DataComp/LAION caption heuristics on word and character counts.

By default characters are counted on the caption stripped of surrounding whitespace and words
are whitespace-separated runs (Python's `str.split()`). DataComp counts its own way, which
`chars: raw` and `words: fasttext` follow exactly (mlfoundations/datacomp,
baselines/apply_filter.py): the basic filter keeps `len(text.split()) > 2` and `len(text) > 5`
on the raw caption (lines 219-228); the image-based filter's caption prefilter keeps
`len(fasttext.tokenize(text)) > 1` and `len(text) > 5` (`caption_filter`, lines 67-75).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.stage import MapStage, StageConfig, Verdict

# fastText's tokenizer (Dictionary::readWord in fastText's dictionary.cc, which fasttext.tokenize
# runs): words are runs of bytes other than these separators, and every newline is a word of its
# own (the end-of-sentence token `</s>`)
FASTTEXT_WORD = "[^ \\n\\r\\t\\x0b\\x0c\\x00]+"


class CaptionConfig(StageConfig):
    """Parameters of the caption stage.

    DataComp basic keeps captions with more than 2 words and more than 5 characters:
    min_words 3, min_chars 6 (DataComp's own counting: chars raw). LAION-5B keeps alt-text of at
    least 5 characters: min_chars 5.
    """

    min_words: int = Field(0, ge=0, description="at least this many words")
    min_chars: int = Field(0, ge=0, description="at least this many characters")
    max_chars: int | None = Field(None, gt=0, description="at most this many characters")
    chars: Literal["stripped", "raw"] = Field(
        "stripped", description="count characters after stripping surrounding whitespace, or on the raw caption "
                                "(DataComp's len(text)); raw: only a null or empty caption is empty_caption")
    words: Literal["whitespace", "fasttext"] = Field(
        "whitespace", description="words split at any whitespace (Python's str.split()), or fastText's tokens "
                                  "(ASCII whitespace and NUL separate, each newline is a token: DataComp's "
                                  "image-based caption filter, len(fasttext.tokenize(text)))")


class Caption(MapStage):
    """Reject empty or whitespace-only captions, too few words or characters, and over-long captions."""

    name = "caption"
    Config = CaptionConfig
    reads = ("text",)
    reasons = ("empty_caption", "too_few_words", "too_few_chars", "caption_too_long")

    def process(self, table: pa.Table) -> Verdict:
        cfg = self.config
        verdict = Verdict(table)
        text = table.column("text").fill_null("")
        # Arrow's Unicode whitespace is Python's str.isspace (checked over every code point in the tests)
        stripped = pc.utf8_trim_whitespace(text)
        chars = pc.utf8_length(stripped if cfg.chars == "stripped" else text).to_numpy(zero_copy_only=False)
        empty = chars == 0
        if empty.any():  # the ledger shows the caption as Python writes it ('None', '  ')
            rows = np.flatnonzero(empty)
            shown = np.full(table.num_rows, None, dtype=object)
            shown[rows] = [repr(t) for t in table.column("text").take(pa.array(rows)).to_pylist()]
            verdict.reject_where(empty, "empty_caption", shown)
        # a stripped caption is never empty here (an empty one went above), so 1 word needs no count
        if cfg.min_words > 1 or (cfg.min_words == 1 and (cfg.words == "fasttext" or cfg.chars == "raw")):
            words = self._words(text, stripped)
            verdict.reject_where(words < cfg.min_words, "too_few_words", words)
        verdict.reject_where(chars < cfg.min_chars, "too_few_chars", chars)
        if cfg.max_chars is not None:
            verdict.reject_where(chars > cfg.max_chars, "caption_too_long", chars)
        return verdict

    def _words(self, text: pa.ChunkedArray, stripped: pa.ChunkedArray) -> np.ndarray:
        """Each caption's word count (whitespace words: counted no further than min_words)."""
        if self.config.words == "fasttext":
            words = pc.add(pc.count_substring_regex(text, FASTTEXT_WORD), pc.count_substring(text, "\n"))
            return words.to_numpy(zero_copy_only=False)
        # split no further than needed: a caption of fewer words is split whole
        words = pc.list_value_length(pc.utf8_split_whitespace(stripped, max_splits=self.config.min_words - 1))
        blank = pc.equal(pc.utf8_length(stripped), 0)  # whitespace only (kept so far by chars: raw): no word
        return pc.if_else(blank, 0, words).to_numpy(zero_copy_only=False)
