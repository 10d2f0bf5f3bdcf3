"""Benchmark: concept matching throughput (captions/s) with 10k and 500k metadata entries, in one run.

Compared on the pool's real captions, one core each:
- curate: the `concept_match` stage (one Aho-Corasick automaton over every entry, whole tokens, any case);
- plain loop: `entry in caption.lower()` for every entry (no word boundaries: the naive baseline);
- MetaCLIP loop: MetaCLIP's published `substr_matching` as first released
  (facebookresearch/MetaCLIP, metaclip/substr_matching.py): `spacing` the caption, then
  `" entry " in text` for every entry; case-sensitive, as published;
- MetaCLIP automaton: its later `substr_matching_ahocorasick.py`: the same spacing, with the
  space-padded entries in a pyahocorasick automaton.
Both MetaCLIP functions are re-implemented below as published (the repo is not a package).

Entries: WordNet lemmas (Debian wordnet-base) and the pool captions' frequent uni- and bigrams,
then generated bigrams of WordNet words until the size is reached (MetaCLIP used 500k entries;
10k is a random WordNet subset plus the captions' n-grams). The loops are timed on a slice of
the (shuffled) captions sized to run a few seconds; the automata on all of them, best of 5 rounds
that alternate between sizes (the machine's load varies). Build times are printed
apart: an automaton is built once per worker.

Usage: .venv/bin/python bench/balance.py [--pool data/openclipart/pool] [--sizes 10000 500000]
"""

from __future__ import annotations

import argparse
import random
import time

import pyarrow as pa
import pyarrow.dataset as ds

from curate.metadata import build_metadata, corpus_ngrams, normalize, wordnet_entries, write_metadata
from curate.stages.concept_match import ConceptMatch, ConceptMatchConfig

from common import ROOT


def metaclip_spacing(text):
    """MetaCLIP's `spacing` (metaclip/substr_matching.py), as published."""
    puncts_to_wrap = [",", ".", ";", ":", "?", "!", "`"]
    chars_to_space = ["\t", "\n", "\r"]
    spaced_text = f" {text} "
    for punct_to_wrap in puncts_to_wrap:
        spaced_text = spaced_text.replace(punct_to_wrap, f" {punct_to_wrap} ")
    for char_to_space in chars_to_space:
        spaced_text = spaced_text.replace(char_to_space, " ")
    return spaced_text


def metaclip_loop(entries: list[str]):
    """MetaCLIP's first `substr_matching`: every space-padded entry tested with `in`."""
    spaced_metadata = [f" {entry} " for entry in entries]

    def substr_matching(text):
        text = metaclip_spacing(text)
        matched_entry_ids = []
        for entry_id, entry in enumerate(spaced_metadata):
            if entry in text:
                matched_entry_ids.append(entry_id)
        return matched_entry_ids

    return substr_matching


def metaclip_automaton(entries: list[str]):
    """MetaCLIP's `substr_matching_ahocorasick`: the space-padded entries in one automaton."""
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for idx, key in enumerate(f" {entry} " for entry in entries):
        automaton.add_word(key, (idx, key))
    automaton.make_automaton()

    def substr_matching(text):
        text = metaclip_spacing(text)
        matched_entry_ids = set()
        for _end_index, (entry_id, _original_value) in automaton.iter(text):
            matched_entry_ids.add(entry_id)
        return list(matched_entry_ids)

    return substr_matching


def plain_loop(entries: list[str]):
    """The naive baseline: every lower-cased entry tested as a substring of the lower-cased caption."""
    lowered = [e.lower() for e in entries]

    def substr_matching(text):
        text = text.lower()
        return [i for i, entry in enumerate(lowered) if entry in text]

    return substr_matching


def make_entries(size: int, captions: list[str], rng: random.Random) -> list[str]:
    """`size` entries, distinct in matching form: the captions' n-grams, WordNet lemmas, then
    generated WordNet bigrams."""
    unigrams, bigrams = corpus_ngrams(captions, 5, 3, 8.0)
    wordnet = wordnet_entries()
    rng.shuffle(wordnet)
    entries = build_metadata({"bench": unigrams + bigrams + wordnet}).column("entry").to_pylist()[:size]
    words = [w for w in wordnet if " " not in w]
    seen = {normalize(e) for e in entries}
    while len(entries) < size:
        pair = f"{rng.choice(words)} {rng.choice(words)}"
        if normalize(pair) not in seen:
            seen.add(normalize(pair))
            entries.append(pair)
    return entries


def throughput(match, captions: list[str]) -> tuple[float, float]:
    """Captions/s and mean matches per caption."""
    start = time.perf_counter()
    found = sum(len(match(c)) for c in captions)
    return len(captions) / (time.perf_counter() - start), found / len(captions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default=str(ROOT / "data/openclipart/pool"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 500_000])
    parser.add_argument("--loop-seconds", type=float, default=4.0, help="about how long each loop baseline runs")
    parser.add_argument("--repeat", type=int, default=5, help="automata: best of this many rounds over all captions")
    parser.add_argument("--work", default="/tmp/curate-bench-balance", help="folder for the metadata files")
    args = parser.parse_args(argv)
    captions = [t or "" for t in ds.dataset(args.pool).to_table(columns=["text"]).column("text").to_pylist()]
    rng = random.Random(0)
    rng.shuffle(captions)  # so the loops' slice is a fair sample of the pool
    print(f"{len(captions):,} captions from {args.pool}; one core\n")
    print(f"{'entries':>8} | {'method':<20} | {'build s':>7} | {'captions/s':>10} | {'matches/caption':>15} | "
          f"{'curate / method':>15}")
    built, matchers = {}, {}
    for size in args.sizes:
        entries = make_entries(size, captions, rng)
        path = f"{args.work}-{size}.parquet"
        write_metadata(build_metadata({"bench": entries}), path)
        start = time.perf_counter()
        stage = ConceptMatch(ConceptMatchConfig(metadata=path))
        stage.setup()
        built[size, "curate concept_match"] = time.perf_counter() - start
        matchers[size, "curate concept_match"] = stage
        for name, factory in (("MetaCLIP automaton", metaclip_automaton), ("MetaCLIP loop", metaclip_loop),
                              ("plain loop", plain_loop)):
            start = time.perf_counter()
            matchers[size, name] = factory(entries)
            built[size, name] = time.perf_counter() - start
    table = pa.table({"text": captions})
    rates: dict = {}
    for _ in range(args.repeat):  # rounds over every automaton, so a busy moment hits them alike; best kept
        for (size, name), match in matchers.items():
            if name == "curate concept_match":
                start = time.perf_counter()
                found = sum(len(c) for c in match.process(table).table.column("concepts").to_pylist())
                result = (len(captions) / (time.perf_counter() - start), found / len(captions))
            elif name == "MetaCLIP automaton":
                result = throughput(match, captions)
            else:
                continue
            rates[size, name] = max(rates.get((size, name), (0.0, 0.0)), result)
    for (size, name), match in matchers.items():
        if (size, name) not in rates:  # one run on a slice sized from a probe, about --loop-seconds long
            probe_rate, _ = throughput(match, captions[:20])
            rates[size, name] = throughput(match, captions[: max(20, int(probe_rate * args.loop_seconds))])
    for size in args.sizes:
        curate_rate = rates[size, "curate concept_match"][0]
        for name in ("curate concept_match", "MetaCLIP automaton", "MetaCLIP loop", "plain loop"):
            rate, per_caption = rates[size, name]
            print(f"{size:>8,} | {name:<20} | {built[size, name]:>7.2f} | {rate:>10,.0f} | {per_caption:>15.2f} | "
                  f"{curate_rate / rate:>14.2f}x")
    small, large = min(args.sizes), max(args.sizes)
    def growth(name: str) -> float:
        return rates[large, name][0] / rates[small, name][0]

    print(f"\ncurate at {large:,} entries runs at {growth('curate concept_match'):.2f}x its speed at {small:,}; "
          f"MetaCLIP's automaton at {growth('MetaCLIP automaton'):.2f}x, its loop at {growth('MetaCLIP loop'):.4f}x")

if __name__ == "__main__":
    main()
