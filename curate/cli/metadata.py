"""`curate metadata`: concept metadata for MetaCLIP-style balancing."""

from __future__ import annotations

from collections import Counter

import click

from curate.cli.errors import UserError, user_errors
from curate.metadata import WORDNET_DIR


@click.group()
def metadata():
    """Concept metadata for MetaCLIP-style balancing (concept_match, concept_balance)."""


@metadata.command("build")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Metadata file: .parquet (entry, source) or text (entry<TAB>source per line).")
@click.option("--wordnet", default=str(WORDNET_DIR), show_default=True, type=click.Path(file_okay=False),
              help="WordNet folder with data.noun/verb/adj/adv (Debian wordnet-base).")
@click.option("--no-wordnet", is_flag=True, help="Leave WordNet out.")
@click.option("--corpus", "corpora", multiple=True, default=["data/openclipart/pool"], show_default=True,
              help="Input(s) whose captions give frequent uni- and bigrams (any `curate run` input).")
@click.option("--no-corpus", is_flag=True, help="Leave corpus n-grams out.")
@click.option("--min-unigram-count", type=click.IntRange(min=1), default=5, show_default=True,
              help="A corpus word is an entry when seen this often (MetaCLIP: 100 in Wikipedia).")
@click.option("--min-bigram-count", type=click.IntRange(min=1), default=3, show_default=True,
              help="A corpus word pair is considered when seen this often.")
@click.option("--min-bigram-pmi", type=float, default=8.0, show_default=True,
              help="... and is an entry when its PMI (log2, NLTK's) reaches this (MetaCLIP: 30 in Wikipedia).")
@click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A user entry list, one entry per line (repeatable).")
@user_errors
def metadata_build(out, wordnet, no_wordnet, corpora, no_corpus, min_unigram_count, min_bigram_count, min_bigram_pmi,
                   files):
    """Build an entry list from WordNet, a corpus's frequent n-grams and user files (MetaCLIP used 500k entries)."""
    from curate.metadata import (
        build_metadata,
        corpus_ngrams,
        read_captions,
        read_entry_file,
        wordnet_entries,
        write_metadata,
    )

    sources = {}
    if not no_wordnet:
        sources["wordnet"] = wordnet_entries(wordnet)
    if not no_corpus:
        unigrams, bigrams = corpus_ngrams(read_captions(list(corpora)), min_unigram_count, min_bigram_count,
                                          min_bigram_pmi)
        sources.update(corpus_unigram=unigrams, corpus_bigram=bigrams)
    for path in files:
        sources[f"file:{path}"] = read_entry_file(path)
    if not sources:
        raise UserError("no source left: drop --no-wordnet or --no-corpus, or give --file")
    table = build_metadata(sources)
    write_metadata(table, out)
    found = Counter(s for entry_sources in table.column("source").to_pylist() for s in entry_sources.split(","))
    click.echo(f"{table.num_rows:,} entries -> {out} (" + ", ".join(f"{name}: {found[name]:,}" for name in sources) +
               "; an entry found by several sources counts for each)")
