"""Synset filter stage: DataComp's text-based filter. Keep a caption when some word of
`text.split()` has a first WordNet synset whose offset is in a synset list (DataComp: the
ImageNet-21k classes).

DataComp's rule (mlfoundations/datacomp, baselines/apply_filter.py): `does_contain_text_entity`
(lines 237-260) takes `wordnet.synsets(word)[0].offset()` of each word of `text.split()` and
keeps the caption when one is in the set; the set is the ImageNet-21k WordNet ids with their
leading `n` cut off (`int(x[1:])`, lines 491-493), so only the offset is compared, whatever the
first synset's part of speech. DataComp runs NLTK 3.8.1 (its requirements.txt) over WordNet 3.0;
`WordNetFirstSynsets` is that version's `synsets()` and `_morphy()` over Debian's WordNet 3.0
files (wordnet-base), checked against NLTK 3.8.1 itself in the tests.

The default synset list is timm's ImageNet-21k list (`imagenet21k_goog_synsets.txt`, the 21,843
classes of Google's fall 2011 release, in the timm wheel's data files); DataComp's own file
(`imagenet21k_wordnet_ids.txt` of its baseline assets) can be given as `synsets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.metadata import WORDNET_DIR
from curate.stage import MapStage, StageConfig, Verdict

POS_ORDER = ("n", "v", "a", "r")  # NLTK's POS_LIST: synsets() lists nouns, then verbs, adjectives, adverbs
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# NLTK's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS
SUBSTITUTIONS = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


def default_synsets() -> Path:
    """timm's ImageNet-21k synset list (WordNet ids such as n01440764, one a line), found without
    importing timm (which imports torch: seconds a worker)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("timm is not installed: its ImageNet-21k synset list is the default; set `synsets`")
    path = Path(spec.origin).parent / "data" / "_info" / "imagenet21k_goog_synsets.txt"
    if not path.exists():
        raise FileNotFoundError(f"ImageNet-21k synset list not found at {path}; reinstall timm or set `synsets`")
    return path


def read_synset_offsets(path: str | Path) -> set[int]:
    """The offsets of a WordNet id list (`n01440764` per line), as DataComp reads it: `int(x[1:])`."""
    offsets = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        wnid = line.strip()
        if not wnid:
            continue
        if len(wnid) < 2 or not wnid[1:].isdigit():
            raise ValueError(f"{path}: line {number}: expected a WordNet id such as n01440764, got {wnid!r}")
        offsets.add(int(wnid[1:]))
    if not offsets:
        raise ValueError(f"{path}: no WordNet ids in it")
    return offsets


class WordNetFirstSynsets:
    """The offset of a word's first synset, as NLTK 3.8.1's `wordnet.synsets(word)[0].offset()`
    gives it: the word lower-cased, each part of speech in turn (noun, verb, adjective, adverb),
    its base forms by `_morphy` (the exception list, else the substitution rules applied once,
    then again and again while nothing is found), the first form's first synset in the index."""

    def __init__(self, folder: str | Path = WORDNET_DIR):
        folder = Path(folder)
        self.first: dict[str, dict[str, int]] = {pos: {} for pos in POS_ORDER}  # pos -> lemma -> first offset
        self.exceptions: dict[str, dict[str, list[str]]] = {pos: {} for pos in POS_ORDER}
        for pos, suffix in POS_FILES.items():
            index, exceptions = folder / f"index.{suffix}", folder / f"{suffix}.exc"
            if not index.exists() or not exceptions.exists():
                raise FileNotFoundError(f"WordNet files {index} and {exceptions} are needed (Debian: apt-get install "
                                        "wordnet-base)")
            for line in index.read_text(encoding="utf-8").splitlines():
                if line.startswith(" "):  # the licence at the top
                    continue
                # lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...
                tokens = line.split()
                self.first.setdefault(tokens[1], {})[tokens[0]] = int(tokens[4 + int(tokens[3]) + 2])
            for line in exceptions.read_text(encoding="utf-8").splitlines():
                terms = line.split()
                if terms:
                    self.exceptions[pos][terms[0]] = terms[1:]

    def offset(self, word: str) -> int | None:
        """The first synset's offset, or None when the word has no synset."""
        word = word.lower()
        for pos in POS_ORDER:
            forms = self._morphy(word, pos)
            if forms:
                return self.first[pos][forms[0]]
        return None

    def _morphy(self, form: str, pos: str) -> list[str]:
        """NLTK 3.8.1's `_morphy(form, pos)`: the base forms of `form` that the index has for `pos`.
        Each round's forms are deduplicated (first occurrence kept), which changes no answer (a
        repeat only adds repeats after it) but keeps a hostile word's rounds from doubling."""
        index, rules = self.first[pos], SUBSTITUTIONS[pos]

        def apply_rules(forms: list[str]) -> list[str]:
            return list(dict.fromkeys(f[: -len(old)] + new for f in forms for old, new in rules if f.endswith(old)))

        def known(forms: list[str]) -> list[str]:
            return list(dict.fromkeys(f for f in forms if f in index))

        if form in self.exceptions[pos]:
            return known([form] + self.exceptions[pos][form])
        forms = apply_rules([form])
        results = known([form] + forms)
        while not results and forms:
            forms = apply_rules(forms)
            results = known(forms)
        return results


class SynsetFilterConfig(StageConfig):
    """Parameters of the synset_filter stage (DataComp text-based: the ImageNet-21k classes)."""

    synsets: str | None = Field(None, description="a WordNet id list (n01440764 per line); default: timm's "
                                                  "ImageNet-21k list (21,843 classes)")
    wordnet: str = Field(str(WORDNET_DIR),
                         description="WordNet 3.0 folder with index.* and *.exc (Debian wordnet-base)")


class SynsetFilter(MapStage):
    """DataComp text-based filter: keep captions with a word whose first WordNet synset is in a list
    (ImageNet-21k classes)."""

    name = "synset_filter"
    Config = SynsetFilterConfig
    reads = ("text",)
    reasons = ("no_listed_synset",)

    def setup(self) -> None:
        self._wordnet = WordNetFirstSynsets(self.config.wordnet)
        self._offsets = read_synset_offsets(self.config.synsets or default_synsets())

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        words = pc.utf8_split_whitespace(table.column("text").fill_null("").combine_chunks())  # str.split()'s words
        flat = pc.list_flatten(words)
        distinct = pc.dictionary_encode(flat)  # each distinct word is looked up once
        listed = np.array([self._wordnet.offset(w) in self._offsets for w in distinct.dictionary.to_pylist()], bool)
        hits = listed[distinct.indices.to_numpy(zero_copy_only=False)] if len(flat) else np.zeros(0, bool)
        rows = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
        matched = np.zeros(table.num_rows, bool)
        matched[rows[hits]] = True
        verdict.reject_where(~matched, "no_listed_synset")
        return verdict
