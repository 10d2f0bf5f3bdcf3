"""PII stage: personal data in captions (emails, phone numbers, street addresses, card numbers,
US SSNs, IBANs, IP addresses) found, then rejected, redacted with a tag, or only recorded.

Phone numbers are Google's libphonenumber rules (the `phonenumbers` package and the metadata it
ships: a number must be valid for its country, the default region's when it has no +code);
the others are patterns with their checks (Luhn for cards, ISO 7064 mod 97 for IBANs, octets
<= 255, the SSA's never-issued SSN ranges). A batch's ASCII captions are searched with RE2
(Arrow) first, so only those that could hold a type meet the Python checks (each RE2 candidate
pattern matches wherever its Python pattern does); other captions meet them all. The ledger
names the types found, never the caption.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

PiiType = Literal["EMAIL", "PHONE", "ADDRESS", "CREDIT_CARD", "SSN", "IBAN", "IP_ADDRESS"]
ALL_TYPES: list[str] = ["EMAIL", "PHONE", "ADDRESS", "CREDIT_CARD", "SSN", "IBAN", "IP_ADDRESS"]

_SUFFIXES = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Square|Sq|"
             "Terrace|Ter|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Trail|Trl|Alley|Row|Crescent|Close|Gardens")
# (candidate search in RE2, the exact pattern in Python); a street address is a house number, one to
# four capitalised words and a street suffix (capitalised or upper case), or a P.O. box
PATTERNS: dict[str, tuple[str, re.Pattern]] = {
    "EMAIL": (r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+\.",
              re.compile(r"(?<![\w.%+\-])[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b")),
    "PHONE": (r"\d[\d \-.()/]{5,}\d", re.compile(r"$^")),  # candidates only: libphonenumber finds them
    "ADDRESS": (r"(?i)\d[a-z]?\s+\w|p\.?\s?o\.?\s+box",
                re.compile(r"\b\d{1,6}[A-Za-z]?\s+(?:[A-Z][A-Za-z'.\-]*\s+){1,4}(?:" + _SUFFIXES + r"|"
                           + _SUFFIXES.upper() + r")\b\.?|\b[Pp]\.?\s?[Oo]\.?\s+[Bb][Oo][Xx]\s+\d+\b")),
    "CREDIT_CARD": (r"\d(?:[ \-]?\d){12,18}", re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")),
    "SSN": (r"\d{3}-\d{2}-\d{4}", re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])")),
    "IBAN": (r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}",  # printed in groups of four, or run together
             re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")),
    "IP_ADDRESS": (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
                   re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")),
}


class PiiConfig(StageConfig):
    """Parameters of the pii stage."""

    mode: Literal["reject", "redact", "columns"] = Field(
        "redact", description="reject captions with PII, replace each find with a tag like <EMAIL>, or only "
                              "write pii_types")
    types: list[PiiType] = Field(ALL_TYPES, min_length=1, description="the kinds of PII looked for")
    phone_regions: list[str] = Field(["US"], min_length=1,
                                     description="regions (ISO 3166 codes) whose national phone formats are read; "
                                                 "numbers written with +country code are found whatever these are")

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        import phonenumbers

        unknown = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
        if unknown:
            raise ValueError(f"{unknown} are not regions libphonenumber knows (ISO 3166 codes such as US, DE, GB)")
        return regions


class Pii(MapStage):
    """Find PII in captions (emails, phones via libphonenumber, addresses, cards, SSNs, IBANs, IPs);
    write pii_types; reject, redact or record."""

    name = "pii"
    Config = PiiConfig
    reads = ("text",)
    writes = {"pii_types": pa.list_(pa.string()), "text": pa.string()}
    reasons = ("pii",)

    def setup(self) -> None:
        import phonenumbers

        self._phonenumbers = phonenumbers

    def process(self, table: pa.Table) -> Verdict:
        texts = table.column("text").combine_chunks()
        # RE2's \d, \s and \w are ASCII, Python's Unicode: RE2 picks the candidates among ASCII captions,
        # where the two agree, and every other caption goes to the Python checks whole
        other = pc.invert(pc.string_is_ascii(texts)).fill_null(False).to_numpy(zero_copy_only=False)
        masks = {kind: pc.match_substring_regex(texts, PATTERNS[kind][0]).fill_null(False)
                 .to_numpy(zero_copy_only=False) | other for kind in self.config.types}
        any_candidate = np.logical_or.reduce(list(masks.values()))
        found: list[list[str]] = [[] for _ in range(len(texts))]
        rewritten = texts.to_numpy(zero_copy_only=False).copy() if self.config.mode == "redact" else None
        for i in np.flatnonzero(any_candidate).tolist():
            text = texts[i].as_py()
            spans = self._spans(text, [kind for kind, mask in masks.items() if mask[i]])
            found[i] = sorted({kind for _, _, kind in spans})
            if rewritten is not None and spans:
                rewritten[i] = _redact(text, spans)
        table = set_column(table, "pii_types", found, pa.list_(pa.string()))
        if rewritten is not None:
            table = set_column(table, "text", rewritten, pa.string())
        verdict = Verdict(table)
        if self.config.mode == "reject":
            has = np.array([bool(kinds) for kinds in found], bool)
            verdict.reject_where(has, "pii", [",".join(kinds) for kinds in found])
        return verdict

    def _spans(self, text: str, kinds: list[str]) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, type) finds in `text`, earliest first (the longer on a tie)."""
        spans = []
        for kind in kinds:
            if kind == "PHONE":
                spans += [(m.start, m.end, kind) for m in self._phones(text)]
                continue
            for match in PATTERNS[kind][1].finditer(text):
                if CHECKS.get(kind, _accept)(match.group(0)):
                    spans.append((match.start(), match.end(), kind))
        kept, end = [], -1
        for start, stop, kind in sorted(spans, key=lambda s: (s[0], s[0] - s[1])):
            if start >= end:
                kept.append((start, stop, kind))
                end = stop
        return kept

    def _phones(self, text: str) -> list:
        """libphonenumber's valid numbers in `text`, for each configured region."""
        found = {}
        for region in self.config.phone_regions:
            for match in self._phonenumbers.PhoneNumberMatcher(text, region):
                found.setdefault((match.start, match.end), match)
        return list(found.values())


def _redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each span replaced by its type's tag (<EMAIL>, <PHONE>, ...)."""
    pieces, last = [], 0
    for start, end, kind in spans:
        pieces += [text[last:start], f"<{kind}>"]
        last = end
    return "".join(pieces) + text[last:]


def _accept(_: str) -> bool:
    return True


def luhn(number: str) -> bool:
    """The Luhn checksum of a card number (spaces and dashes ignored)."""
    digits = [int(d) for d in number if d.isdigit()][::-1]
    return sum(d if k % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for k, d in enumerate(digits)) % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616's check: the IBAN, its first four characters moved to the end and letters as
    numbers (A = 10), is 1 modulo 97."""
    compact = iban.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1


CHECKS = {"CREDIT_CARD": luhn, "IBAN": iban_valid}
