"""concept_match on real pool captions: whole-token, case-insensitive Aho-Corasick matching."""

import re

import pyarrow as pa
import pytest

from curate.metadata import ConceptMatcher, load_metadata, tokens
from curate.stages.concept_match import ConceptMatch, ConceptMatchConfig


def oracle(entry: str, caption: str) -> bool:
    """An independent reading of "found at word boundaries, any case" for an entry of words."""
    words = entry.split()
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, caption, re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def captions(pool_table) -> list[str]:
    return [t for t in pool_table.column("text").to_pylist() if t and t.strip()]


@pytest.fixture(scope="module")
def probe_entries(captions) -> list[str]:
    """Entries made from the captions: whole words in other cases, word pairs, and pieces of
    words (prefixes, suffixes) that occur inside longer words but must not match there."""
    words = sorted({w for c in captions for w in re.findall(r"\w+", c) if len(w) >= 4})[:300]
    pairs = sorted({" ".join(p) for c in captions for p in zip(re.findall(r"\w+", c), re.findall(r"\w+", c)[1:])})[:100]
    pieces = sorted({w[:3] for w in words} | {w[-3:] for w in words})
    return [w.upper() for w in words[::2]] + [w.lower() for w in words[1::2]] + pairs + pieces


def test_matcher_agrees_with_a_word_boundary_oracle_on_real_captions(captions, probe_entries):
    matcher = ConceptMatcher(probe_entries)
    inside_word = case_differs = 0
    for caption in captions:
        found = set(matcher.match(caption))
        expected = {i for i, e in enumerate(probe_entries) if oracle(e, caption)}
        assert found == expected, (caption, [probe_entries[i] for i in found ^ expected])
        for i, entry in enumerate(probe_entries):
            if i not in expected and entry.lower() in caption.lower():
                inside_word += 1  # a substring hit that is not a whole token: must not (and did not) match
            if i in expected and entry not in caption:
                case_differs += 1  # matched although the caption writes it in another case
    assert inside_word > 50 and case_differs > 50  # the probe really exercised both rules


def test_examples_from_real_captions(captions):
    caption = next(c for c in captions if re.search(r"\b\w{6,}\b", c))
    word = re.search(r"\b(\w{6,})\b", caption).group(1)
    matcher = ConceptMatcher([word.upper(), word[1:], word[:-1], f"{word}s", word.swapcase()])
    found = matcher.match(f"{caption}!")
    assert 0 in found and 4 in found  # any case
    assert 1 not in matcher.match(word) and 2 not in matcher.match(word) and 3 not in matcher.match(word)
    assert matcher.match(f"({word.lower()}), ...") == [0, 4]  # punctuation is a boundary
    assert matcher.match(f"{word}_x") == []  # an underscore is a word character


def test_punctuated_entries_and_shared_forms():
    matcher = ConceptMatcher(["C++", "c ++", "cat's", "Dog", "dog", "ice cream"])
    assert matcher.match("I write c++ code") == [0, 1]  # same matching form: both ids
    assert matcher.match("the cat's toy") == [2]
    assert matcher.match("DOG days") == [3, 4]
    assert matcher.match("ice  cream\tcone") == [5]  # any run of whitespace between words
    assert matcher.match("icecream") == [] and matcher.match(None) == [] and matcher.match("") == []


def test_stage_writes_sorted_entry_ids(pool_table, concept_metadata):
    stage = ConceptMatch(ConceptMatchConfig(metadata=str(concept_metadata)))
    stage.setup()
    table = pool_table.select(["uid", "text"]).slice(0, 60)
    table = pa.concat_tables([table, pa.table({"uid": ["none", "blank"], "text": [None, "   "]})])
    verdict = stage.process(table)
    assert all(r is None for r in verdict.reasons)  # matching never rejects
    column = verdict.table.column("concepts")
    assert column.type == pa.list_(pa.int32())
    entries = load_metadata(concept_metadata)
    for text, found in zip(table.column("text").to_pylist(), column.to_pylist()):
        assert found == sorted(found)
        expected = [i for i, e in enumerate(entries) if oracle(e, text or "")] if tokens(text or "") else []
        assert found == expected
    assert column.to_pylist()[-2:] == [[], []]
    assert sum(1 for f in column.to_pylist() if f) > 30
