"""caption's DataComp counting: characters of the raw caption (chars: raw) and fastText's tokens
(words: fasttext), against a transcription of fastText's tokenizer and DataComp's expressions."""

import pyarrow as pa

from curate.stages.caption import Caption, CaptionConfig
from tests.datacomp_reference import fasttext_tokenize

TEXTS = ["I a m", "I am a", "I a m ", " I am", "ab cd", "a b c", "dog\n", "dog\ncat", "\n\n\n\n\n\n", "      ",
         "a\u00a0b c", "a\x0bb", "a\x00b\tc", "", "tab\tsep words", "\u3000x y z"]


def kept(config: CaptionConfig, texts=TEXTS) -> list[str]:
    verdict = Caption(config).process(pa.table({"uid": [str(i) for i in range(len(texts))], "text": texts}))
    return [t for t, r in zip(texts, verdict.reasons) if r is None]


def test_basic_counting_is_datacomps():
    """len(text.split()) > 2 and len(text) > 5 (baselines/apply_filter.py, lines 219-228)."""
    expected = [t for t in TEXTS if len(t.split()) > 2 and len(t) > 5]
    assert kept(CaptionConfig(min_words=3, min_chars=6, chars="raw")) == expected
    assert "I a m " in expected  # 6 characters raw, 5 stripped: the default counting differs
    assert "I a m " not in kept(CaptionConfig(min_words=3, min_chars=6))


def test_image_based_prefilter_counts_fasttext_tokens():
    """len(fasttext.tokenize(text)) > 1 and len(text) > 5 (lines 67-75): ASCII whitespace and NUL
    separate words (a no-break space does not) and each newline is a token of its own."""
    assert fasttext_tokenize("dog\n") == ["dog", "</s>"] and fasttext_tokenize("a\u00a0b c") == ["a\u00a0b", "c"]
    expected = [t for t in TEXTS if len(fasttext_tokenize(t)) > 1 and len(t) > 5]
    assert kept(CaptionConfig(min_words=2, min_chars=6, chars="raw", words="fasttext")) == expected
    assert "\n\n\n\n\n\n" in expected and "      " not in expected
    counts = Caption(CaptionConfig(min_words=100, words="fasttext", chars="raw")).process(
        pa.table({"uid": [str(i) for i in range(len(TEXTS))], "text": TEXTS}))
    assert [int(v) for v, t in zip(counts.values, TEXTS) if t] == [len(fasttext_tokenize(t)) for t in TEXTS if t]
