"""Text filter stage: regular expressions and a word blocklist on the caption."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
from pydantic import Field, model_validator

from curate.stage import MapStage, StageConfig, Verdict


class TextFilterConfig(StageConfig):
    """Parameters of the text_filter stage."""

    patterns: list[str] = Field([], description="regular expressions; a caption matching any is rejected")
    blocklist: list[str] = Field([], description="words; a caption containing any as a whole word is rejected")
    blocklist_file: str | None = Field(None, description="file with one blocked word per line")
    ignore_case: bool = True

    @model_validator(mode="after")
    def _check(self):
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        if self.blocklist_file is not None and not Path(self.blocklist_file).is_file():
            raise ValueError(f"blocklist_file {self.blocklist_file!r} does not exist")
        return self


class TextFilter(MapStage):
    """Reject captions that match a regular expression or contain a blocklisted word."""

    name = "text_filter"
    Config = TextFilterConfig
    reads = ("text",)
    reasons = ("pattern", "blocklist")

    def setup(self) -> None:
        flags = re.IGNORECASE if self.config.ignore_case else 0
        self._patterns = [re.compile(p, flags) for p in self.config.patterns]
        words = list(self.config.blocklist)
        if self.config.blocklist_file:
            lines = Path(self.config.blocklist_file).read_text(encoding="utf-8").splitlines()
            words += [w.strip() for w in lines if w.strip() and not w.startswith("#")]
        self._blocklist = (
            re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", flags)
            if words
            else None
        )

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        for i, text in enumerate(table.column("text").to_pylist()):
            text = text or ""
            for pattern in self._patterns:
                if pattern.search(text):
                    verdict.reject(i, "pattern", pattern.pattern)
                    break
            if self._blocklist is not None and (match := self._blocklist.search(text)):
                verdict.reject(i, "blocklist", match.group(0))
        return verdict
