"""Caption stage: DataComp/LAION caption heuristics on word and character counts."""

from __future__ import annotations

import pyarrow as pa
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
        for i, text in enumerate(table.column("text").to_pylist()):
            stripped = (text or "").strip()
            if not stripped:
                verdict.reject(i, "empty_caption", repr(text))
            elif len(stripped.split()) < cfg.min_words:
                verdict.reject(i, "too_few_words", len(stripped.split()))
            elif len(stripped) < cfg.min_chars:
                verdict.reject(i, "too_few_chars", len(stripped))
            elif cfg.max_chars is not None and len(stripped) > cfg.max_chars:
                verdict.reject(i, "caption_too_long", len(stripped))
        return verdict
