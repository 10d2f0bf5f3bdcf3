"""Concept metadata (MetaCLIP): an entry list built from WordNet, a corpus's frequent uni- and
bigrams and user files, and the Aho-Corasick matcher that finds entries in captions.

MetaCLIP (Xu et al. 2023) used 500,000 entries: WordNet synsets, Wikipedia unigrams seen at
least 100 times, Wikipedia bigrams with PMI >= 30 and Wikipedia titles with at least 70 views;
its balancing threshold was t = 20,000 for a 400M-sample pool and t = 170,000 for 2.5B.

Entries and captions go through one normalization (`normalize`): lower case, split into
word runs (`\\w+`) and single punctuation marks, joined by single spaces and padded with one.
An entry therefore matches a caption only on whole tokens (word boundaries), whatever the
case: "cat" matches "Cat's toy" and "A CAT" but not "concatenate" or "cats". This is
MetaCLIP's `spacing` (padding entries and captions with spaces) made uniform: MetaCLIP pads
only , . ; : ? ! and `, so its "cat" misses "cat's" and "black-and-white" keeps "black" hidden.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOKEN = re.compile(r"\w+|[^\w\s]")
WORD = re.compile(r"\w")
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
METADATA_SCHEMA = pa.schema([pa.field("entry", pa.string(), nullable=False), pa.field("source", pa.string())])


class MetadataError(ValueError):
    """A metadata file or source that cannot be read; the message names the file and line."""


def tokens(text: str) -> list[str]:
    """Lower-cased word runs and single punctuation marks of `text`."""
    return TOKEN.findall(text.lower())


def normalize(text: str) -> str:
    """The matching form: tokens joined by single spaces, padded with one space each side."""
    return f" {' '.join(tokens(text))} "


def wordnet_entries(folder: str | Path = WORDNET_DIR) -> list[str]:
    """Every lemma of every WordNet synset (Debian's wordnet-base `data.*` files), with
    underscores as spaces and adjective markers such as `(a)` dropped, in file order.

    A data line is `offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id]... ...`;
    lines starting with a space are the licence header."""
    folder = Path(folder)
    entries = []
    for part in WORDNET_PARTS:
        path = folder / f"data.{part}"
        if not path.exists():
            raise MetadataError(f"{path}: WordNet data file missing; install Debian's wordnet-base "
                                "(`apt-get install wordnet-base`) or pass another WordNet folder")
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if line.startswith(" "):
                    continue
                fields = line.split(" ", 4 + 2 * 256)
                try:
                    count = int(fields[3], 16)
                    words = fields[4 : 4 + 2 * count : 2]
                except (IndexError, ValueError) as exc:
                    raise MetadataError(f"{path}:{number}: not a WordNet data line: {line[:80]!r}") from exc
                entries += [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in words]
    return entries


def corpus_ngrams(texts: Iterable[str | None], min_unigram_count: int, min_bigram_count: int,
                  min_bigram_pmi: float) -> tuple[list[str], list[str]]:
    """Frequent unigrams and collocated bigrams of a corpus, most frequent first.

    Unigrams: word tokens seen at least `min_unigram_count` times (MetaCLIP: 100 in Wikipedia).
    Bigrams: adjacent word tokens (punctuation breaks a pair) seen at least `min_bigram_count`
    times whose pointwise mutual information log2(n_ab * N / (n_a * n_b)) is at least
    `min_bigram_pmi` (NLTK's `BigramAssocMeasures.pmi`, which MetaCLIP used with 30 on Wikipedia)."""
    unigrams: Counter = Counter()
    bigrams: Counter = Counter()
    for text in texts:
        previous = None
        for token in tokens(text or ""):
            if not WORD.match(token):
                previous = None
                continue
            unigrams[token] += 1
            if previous is not None:
                bigrams[(previous, token)] += 1
            previous = token
    total = sum(unigrams.values())
    words = [w for w, n in sorted(unigrams.items(), key=lambda x: (-x[1], x[0])) if n >= min_unigram_count]
    pairs = []
    for (a, b), n in sorted(bigrams.items(), key=lambda x: (-x[1], x[0])):
        if n >= min_bigram_count and math.log2(n * total / (unigrams[a] * unigrams[b])) >= min_bigram_pmi:
            pairs.append(f"{a} {b}")
    return words, pairs


def read_captions(inputs: list[str], batch_size: int = 4096) -> Iterable[str | None]:
    """The `text` of every sample of any input `curate run` reads (Parquet, WebDataset, ...)."""
    from curate.io.readers.tasks import plan_inputs, read_task

    for task in plan_inputs(inputs):
        for batch in read_task(task, batch_size):
            yield from batch.table.column("text").to_pylist()


def read_entry_file(path: str | Path) -> list[str]:
    """A user's entry list: one entry per line (blank lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return [line.strip() for line in lines if line.strip()]


def build_metadata(sources: dict[str, Iterable[str]]) -> pa.Table:
    """One table (entry, source) from named entry lists, deduplicated on the matching form: an
    entry found by several sources appears once, at its first position, with every source
    named (comma-separated). Entries with no word character (pure punctuation) are dropped."""
    order: dict[str, int] = {}
    entries: list[str] = []
    found: list[list[str]] = []
    for name, items in sources.items():
        for entry in items:
            key = normalize(entry)
            if not WORD.search(key):
                continue
            if key not in order:
                order[key] = len(entries)
                entries.append(entry.strip())
                found.append([])
            if name not in found[order[key]]:
                found[order[key]].append(name)
    return pa.table({"entry": entries, "source": [",".join(s) for s in found]}, schema=METADATA_SCHEMA)


def write_metadata(table: pa.Table, path: str | Path) -> None:
    """Store the metadata as Parquet (`.parquet`) or text (`entry<TAB>source` per line)."""
    from curate.io.writers import atomic, write_table_atomic

    path = Path(path)
    if path.suffix == ".parquet":
        write_table_atomic(table, path)
        return
    with atomic(path) as tmp:
        tmp.write_text("".join(f"{e}\t{s}\n" for e, s in zip(table.column("entry").to_pylist(),
                                                             table.column("source").to_pylist())), encoding="utf-8")


def load_metadata(path: str | Path) -> list[str]:
    """The entries of a metadata file; an entry's id is its position (row or line, from 0).
    Parquet needs an `entry` column; a text file has one entry per line, optionally followed by
    a tab and its source. An empty entry is an error naming its row or line."""
    path = Path(path)
    if not path.exists():
        raise MetadataError(f"{path}: metadata file not found; build one with `curate metadata build --out {path}`")
    if path.suffix == ".parquet":
        schema = pq.read_schema(path)
        if "entry" not in schema.names:
            raise MetadataError(f"{path}: no 'entry' column (found {schema.names})")
        entries = pq.read_table(path, columns=["entry"]).column("entry").to_pylist()
        where = "row"
    else:
        try:
            entries = [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as exc:
            raise MetadataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        where = "line"
    for i, entry in enumerate(entries):
        if entry is None or normalize(entry).strip() == "":
            start = 0 if where == "row" else 1
            raise MetadataError(f"{path}: {where} {i + start}: empty entry {entry!r}; expected a word or phrase")
    return entries


class ConceptMatcher:
    """All entries of a metadata list in one Aho-Corasick automaton (pyahocorasick), matched on
    whole tokens, case-insensitively. Entries with the same matching form share a key."""

    def __init__(self, entries: list[str]):
        import ahocorasick

        ids: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            ids.setdefault(normalize(entry), []).append(i)
        self.automaton = ahocorasick.Automaton()
        for key, found in ids.items():
            self.automaton.add_word(key, tuple(found))
        self.automaton.make_automaton()
        self.size = len(entries)

    def match(self, text: str | None) -> list[int]:
        """Sorted ids of the entries found in `text` (each once)."""
        if not text:
            return []
        found: set[int] = set()
        for _, ids in self.automaton.iter(normalize(text)):
            found.update(ids)
        return sorted(found)


def rank_profile(counts, points: int = 60) -> list[list[int]]:
    """(rank, count) of the entries sorted by count, at about `points` log-spaced ranks (the
    curve of a log-log rank-count plot, small enough for stats.json at any metadata size)."""
    ordered = np.sort(np.asarray([c for c in counts if c > 0], np.int64))[::-1]
    if len(ordered) == 0:
        return []
    ranks = np.unique(np.geomspace(1, len(ordered), points).round().astype(np.int64))
    return [[int(r), int(ordered[r - 1])] for r in ranks]
