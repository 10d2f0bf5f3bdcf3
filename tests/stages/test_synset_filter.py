"""synset_filter (DataComp's text-based filter): a word's first WordNet synset, as NLTK 3.8.1
(DataComp's version) finds it, checked against NLTK itself over every word of the pool's
captions and WordNet's own inflections."""

import time

import pyarrow as pa
import pytest

from curate.stages.synset_filter import (
    SynsetFilter,
    SynsetFilterConfig,
    WordNetFirstSynsets,
    default_synsets,
    read_synset_offsets,
)
from tests.datacomp_reference import nltk_wordnet


@pytest.fixture(scope="module")
def wordnet():
    return WordNetFirstSynsets()


def test_first_synset_offsets_are_nltk_3_8_1s(wordnet, pool_table):
    nltk = nltk_wordnet()
    words = {w for text in pool_table.column("text").to_pylist() for w in (text or "").split()}
    words |= {"Dogs", "geese", "ran", "better", "running", "glasses", "women", "leaves", "axes", "is", "dogsss",
              "boxesss", "quickly", "ATTORNEYS-GENERAL", "mice", "crane", "A"}
    assert len(words) > 250
    for word in sorted(words):
        synsets = nltk.synsets(word)
        assert wordnet.offset(word) == (synsets[0].offset() if synsets else None), word


def test_a_hostile_word_does_not_blow_up(wordnet):
    """NLTK 3.8.1 applies the rules again while nothing is found, each round branching; rounds
    are deduplicated here (which changes no answer), so a long word of endings stays fast."""
    start = time.perf_counter()
    wordnet.offset("es" * 300)  # 2^150 forms in NLTK's last round without the deduplication
    assert wordnet.offset("dog" + "s" * 2000) == wordnet.offset("dog")
    assert time.perf_counter() - start < 5


def test_a_caption_needs_a_word_whose_first_synset_is_listed(tmp_path):
    listed = read_synset_offsets(default_synsets())
    assert len(listed) == 21_843  # timm's ImageNet-21k list (Google's fall 2011 release)
    stage = SynsetFilter(SynsetFilterConfig())
    stage.setup()
    texts = ["the crane", "the Cranes", "a mouse", "", None, "nothing of the sort", "  bank  "]
    verdict = stage.process(pa.table({"uid": [str(i) for i in range(len(texts))], "text": texts}))
    # crane's first synset is Hart Crane (not a class) though later ones are; "cranes" is the same word
    assert verdict.reasons.tolist() == ["no_listed_synset", "no_listed_synset", None, "no_listed_synset",
                                        "no_listed_synset", "no_listed_synset", None]
    (tmp_path / "mine.txt").write_text("n09213565\n\n")  # bank.n.01, sloping land
    own = SynsetFilter(SynsetFilterConfig(synsets=str(tmp_path / "mine.txt")))
    own.setup()
    assert own.process(pa.table({"uid": ["a", "b"], "text": ["a bank", "a mouse"]})).reasons.tolist() == \
        [None, "no_listed_synset"]
    (tmp_path / "bad.txt").write_text("n01440764\ntench\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: expected a WordNet id"):
        read_synset_offsets(tmp_path / "bad.txt")
