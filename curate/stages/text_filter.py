"""Text filter stage: regular expressions and a word blocklist on the caption."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.stage import MapStage, StageConfig, Verdict
from curate.textmatch import WordMatcher, re2_form


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
        self._patterns = [(p, re2_form(p)) for p in (re.compile(p, flags) for p in self.config.patterns)]
        words = list(self.config.blocklist)
        if self.config.blocklist_file:
            lines = Path(self.config.blocklist_file).read_text(encoding="utf-8").splitlines()
            words += [w.strip() for w in lines if w.strip() and not w.startswith("#")]
        self._blocklist = (
            re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", flags)
            if words
            else None
        )
        self._words = WordMatcher(words, self.config.ignore_case)

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        texts = table.column("text").fill_null("").combine_chunks()
        everywhere = np.ones(len(texts), bool)
        # RE2 decides the non-empty ASCII rows (where it and Python agree), Python the others
        ascii = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False) & (pc.binary_length(texts).to_numpy() > 0)
        for pattern, form in self._patterns:
            found = np.zeros(len(texts), bool)
            by_python = everywhere if form is None else ~ascii
            if form is not None:
                found[ascii] = pc.match_substring_regex(texts, form).to_numpy(zero_copy_only=False)[ascii]
            found[by_python] = _search(pattern, texts, by_python, lambda match: match is not None)
            verdict.reject_where(found, "pattern", np.full(len(texts), pattern.pattern, dtype=object))
        if self._blocklist is not None:
            if self._words.usable:
                words = self._words.first_matches(texts)
            else:
                words = np.full(len(texts), None, dtype=object)
                words[:] = _search(self._blocklist, texts, everywhere, lambda match: match and match.group(0))
            verdict.reject_where(np.not_equal(words, None), "blocklist", words)
        return verdict


def _search(pattern: re.Pattern, texts: pa.Array, rows: np.ndarray, answer) -> list:
    """`answer(pattern.search(text))` for each text where `rows` is true, in order."""
    return [answer(pattern.search(t)) for t in texts.filter(pa.array(rows)).to_pylist()]
