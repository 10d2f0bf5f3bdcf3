"""The columnar map stages against per-row Python references (the rules as first written, one
row at a time): the same kept rows, reasons and ledger values on captions built to find where
Arrow and Python could differ (Unicode whitespace, nulls, empty strings, case twins, newlines)."""

from __future__ import annotations

import random
import re
import string
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.stages.caption import Caption, CaptionConfig
from curate.stages.file_size import FileSize, FileSizeConfig
from curate.stages.language import Language, LanguageConfig
from curate.stages.text_filter import TextFilter, TextFilterConfig
from curate.textmatch import ASCII_TWINS, WordMatcher, re2_form

WHITESPACE = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
# not whitespace, though they look like it or sit next to it in Unicode
NEAR_SPACE = ["\u200b", "\u180e", "\ufeff", "\u2060", "\x00", "\x1b"]
# Python's case-insensitive matching takes these for ASCII letters (Kelvin sign, long s, dotless and dotted I)
CASE_TWINS = ["\u212a", "\u017f", "\u0131", "\u0130"]
PIECES = (["spam", "Spam", "SPAM", "ham", "spammer", "c++", "free money", "free", "money", "a", "drawing", "é", "東京",
           "ß", "_", "-", "http://x.test", "https", "s", "k", "i", "x1", "\n", "$"]
          + WHITESPACE + NEAR_SPACE + CASE_TWINS)


def random_texts(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    texts: list[str | None] = [None, "", " ", "\n", "spam", "spam\n", "a\n", "\u00a0spam\u3000"]
    for _ in range(n):
        texts.append("".join(rng.choice(PIECES) + rng.choice(["", " ", " ", rng.choice(WHITESPACE)])
                             for _ in range(rng.randint(0, 8))))
    return texts


def table_of(texts) -> pa.Table:
    half = len(texts) // 2  # two chunks, as a batch read from several row groups arrives
    uids = [f"{i:032x}" for i in range(len(texts))]
    return pa.Table.from_batches([
        pa.record_batch({"uid": uids[:half], "text": pa.array(texts[:half], pa.string())}),
        pa.record_batch({"uid": uids[half:], "text": pa.array(texts[half:], pa.string())}),
    ])


def test_arrow_whitespace_is_python_whitespace_for_every_code_point():
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    words = pc.list_value_length(pc.utf8_split_whitespace(pa.array([f"a{c}b" for c in chars]))).to_pylist()
    trimmed = pc.utf8_trim_whitespace(pa.array([f"{c}a{c}" for c in chars])).to_pylist()
    assert [c for c, n in zip(chars, words) if n == 2] == WHITESPACE
    assert [c for c, t in zip(chars, trimmed) if t == "a"] == WHITESPACE


def caption_reference(cfg: CaptionConfig, texts):
    out = []
    for text in texts:
        stripped = (text or "").strip()
        if not stripped:
            out.append(("empty_caption", repr(text)))
        elif len(stripped.split()) < cfg.min_words:
            out.append(("too_few_words", str(len(stripped.split()))))
        elif len(stripped) < cfg.min_chars:
            out.append(("too_few_chars", str(len(stripped))))
        elif cfg.max_chars is not None and len(stripped) > cfg.max_chars:
            out.append(("caption_too_long", str(len(stripped))))
        else:
            out.append((None, None))
    return out


@pytest.mark.parametrize("cfg", [CaptionConfig(min_words=3, min_chars=6), CaptionConfig(min_chars=5),
                                 CaptionConfig(min_words=2, min_chars=3, max_chars=12), CaptionConfig(min_words=1)])
def test_caption_matches_per_row_reference(cfg):
    texts = random_texts(3000, seed=1)
    verdict = Caption(cfg).process(table_of(texts))
    expected = caption_reference(cfg, texts)
    assert list(zip(verdict.reasons, verdict.values)) == expected
    assert {r for r, _ in expected} >= {"empty_caption", None}


def test_file_size_matches_per_row_reference():
    images = [None, b"", b"x", b"x" * 9, b"x" * 10, b"x" * 50, b"x" * 51, b"\x00" * 200]
    table = pa.table({"uid": [f"{i:032x}" for i in range(len(images))], "image": pa.array(images, pa.binary())})
    verdict = FileSize(FileSizeConfig(min_bytes=10, max_bytes=50)).process(table)
    expected = []
    for image in images:
        size = len(image or b"")
        expected.append(("file_too_small", f"{size} B") if size < 10 else ("file_too_large", f"{size} B")
                        if size > 50 else (None, None))
    assert list(zip(verdict.reasons, verdict.values)) == expected


@pytest.fixture(scope="module")
def language_stage():
    stage = Language(LanguageConfig(languages=["en", "de"], min_score=0.5))
    stage.setup()
    return stage


def test_language_matches_per_row_reference(language_stage):
    texts = random_texts(1500, seed=2) + ["a red fox jumping over the fence", "ein kleiner Hund im Garten"] * 3
    verdict = language_stage.process(table_of(texts))
    model, cfg = language_stage._model, language_stage.config
    for i, text in enumerate(texts):
        labels, probs = model.predict(" ".join((text or "").split()), k=1)
        lang, score = labels[0].removeprefix("__label__"), min(float(probs[0]), 1.0)
        assert verdict.table.column("lang")[i].as_py() == lang
        assert verdict.table.column("lang_score")[i].as_py() == pa.scalar(score, pa.float32()).as_py()
        if lang not in cfg.languages:
            assert (verdict.reasons[i], verdict.values[i]) == ("language", f"{lang}:{score:.3f}")
        elif score < cfg.min_score:
            assert (verdict.reasons[i], verdict.values[i]) == ("language_score", f"{lang}:{score:.3f}")
        else:
            assert verdict.reasons[i] is None
    assert {"language", "language_score", None} <= set(verdict.reasons)


PATTERNS = [
    r"https?://", r"^a drawing", r"spam$", r"^$", r"\bfree\b", r"\Bpam", r"\B", r"\s\s", r"\S+\s*$", r"[^\w\s]",
    r"[a-k]+\d", r"(?i:SPAM)\b", r"(?m)^spam$", r"(?s)a.b", r"a.b", r"x{2,}", r"(?:ha|spam){2}", r"c\+\+",
    r"[\W_]{3}", r"[^a-z]", r"\d?\w+?\Z", r"\Aspam|money\Z", r"(fr|mon)(ee|ey)", r"(?x) s p a m  # verbose", r"é|s",
    r"[\u017f]", r"\u212a", r"[^\u0131]", r"k", r"(?a)\s", r"\t|\x0b", r"free(?= money)", r"(sp)am\1",
]


def test_re2_forms_agree_with_python_on_ascii_text():
    texts = [t for t in random_texts(4000, seed=3) if t and t.isascii()]
    texts += ["a\nb", "spam\n", "spam\n\n", "xx", "\x0b", "\x1c", "free money", "a drawing", "K", "s", "i", "ha" * 3]
    translated = 0
    for ignore_case in (False, True):
        for source in PATTERNS:
            pattern = re.compile(source, re.IGNORECASE if ignore_case else 0)
            form = re2_form(pattern)
            if form is None:
                continue
            translated += 1
            found = pc.match_substring_regex(pa.array(texts), form).to_pylist()
            expected = [pattern.search(t) is not None for t in texts]
            wrong = [t for t, f, e in zip(texts, found, expected) if f != e]
            assert found == expected, (source, ignore_case, form, wrong[:5])
    assert translated >= 2 * (len(PATTERNS) - 2)  # all but the lookahead and the back reference


def text_filter_reference(stage: TextFilter, texts):
    flags = re.IGNORECASE if stage.config.ignore_case else 0
    patterns = [re.compile(p, flags) for p in stage.config.patterns]
    words = stage.config.blocklist
    blocklist = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", flags)
    out = []
    for text in texts:
        text = text or ""
        hit = next((p for p in patterns if p.search(text)), None)
        match = blocklist.search(text) if words else None
        out.append(("pattern", hit.pattern) if hit else ("blocklist", match.group(0)) if match else (None, None))
    return out


@pytest.mark.parametrize("patterns", [[r"https?://", r"money$", r"\Bney", r"(sp)am\1"], [r"\B", r"^$", r"^\s*$"]])
@pytest.mark.parametrize("ignore_case", [True, False])
@pytest.mark.parametrize("words", [["spam", "spam offer", "c++", "free money", "free", "_", "s", "k", "i", "ham"],
                                   ["spam", "schön"], []])
def test_text_filter_matches_per_row_reference(patterns, ignore_case, words):
    stage = TextFilter(TextFilterConfig(patterns=patterns, blocklist=words, ignore_case=ignore_case))
    stage.setup()
    texts = random_texts(3000, seed=4) + ["spam offer", "Spam Offer!", "\u017fpam", "\u212a", "c++ code", "free-money"]
    verdict = stage.process(table_of(texts))
    expected = text_filter_reference(stage, texts)
    assert list(zip(verdict.reasons, verdict.values)) == expected
    assert sum(r == "pattern" for r, _ in expected) > 100
    if words and "\\B" not in patterns:  # (which rejects nearly every caption first)
        assert sum(r == "blocklist" for r, _ in expected) > 100


def test_ascii_twins_are_the_non_ascii_characters_python_matches_to_a_letter():
    others = "".join(map(chr, range(128, sys.maxunicode + 1)))
    found = {twin: letter for letter in string.ascii_lowercase for twin in re.findall(letter, others, re.IGNORECASE)}
    assert found == ASCII_TWINS


def test_word_matcher_takes_case_twins_as_python_does():
    matcher = WordMatcher(["sk", "i"], ignore_case=True)
    texts = ["\u017f\u212a", "S\u212a!", "\u0131", "\u0130x", "x\u0130", "ask", "_i_", "i\u00e9", "\u00e9i"]
    pattern = re.compile(r"\b(sk|i)\b", re.IGNORECASE)
    expected = [m.group(0) if (m := pattern.search(t)) else None for t in texts]
    assert matcher.first_matches(pa.array(texts)).tolist() == expected
    assert expected[:4] == ["\u017f\u212a", "S\u212a", "\u0131", None]  # the twins were really exercised
