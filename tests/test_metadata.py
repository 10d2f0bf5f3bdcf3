"""Concept metadata: WordNet lemmas, corpus n-grams, user files, `curate metadata build`."""

import math
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.metadata import (
    WORDNET_DIR,
    MetadataError,
    build_metadata,
    corpus_ngrams,
    load_metadata,
    tokens,
    wordnet_entries,
)


@pytest.fixture(scope="module")
def wordnet() -> list[str]:
    if not (WORDNET_DIR / "data.noun").exists():
        pytest.fail(f"{WORDNET_DIR} missing: run `make test` (it installs wordnet-base)")
    return wordnet_entries()


def test_wordnet_lemmas(wordnet):
    assert len(wordnet) > 200_000  # lemmas of all 117k synsets, repeated across senses
    lemmas = set(wordnet)
    assert {"dog", "hot dog", "ice cream", "entity", "quickly"} <= lemmas  # nouns, compounds, adverbs
    assert not any("_" in e or e.endswith(("(a)", "(p)", "(ip)")) for e in lemmas)


def test_corpus_ngrams_follow_their_thresholds(pool_table):
    texts = pool_table.column("text").to_pylist()
    unigrams, bigrams = corpus_ngrams(texts, 3, 2, 5.0)
    words, pairs = Counter(), Counter()
    for text in texts:
        run = []
        for token in tokens(text or "") + ["."]:
            if token[0].isalnum() or token[0] == "_":
                run.append(token)
                continue
            words.update(run)
            pairs.update(zip(run, run[1:]))
            run = []
    assert set(unigrams) == {w for w, n in words.items() if n >= 3}
    total = sum(words.values())
    pmi = {f"{a} {b}": math.log2(n * total / (words[a] * words[b])) for (a, b), n in pairs.items() if n >= 2}
    assert set(bigrams) == {p for p, v in pmi.items() if v >= 5.0}
    assert bigrams and len(bigrams) < len(pmi)  # the PMI threshold removed some frequent pairs


def test_build_deduplicates_across_sources_and_names_them():
    table = build_metadata({"wordnet": ["dog", "Hot dog", "dog"], "corpus_unigram": ["DOG", "svg", "!!"],
                            "file:mine.txt": ["hot  dog", "Sailing Boat"]})
    assert table.to_pylist() == [
        {"entry": "dog", "source": "wordnet,corpus_unigram"},
        {"entry": "Hot dog", "source": "wordnet,file:mine.txt"},
        {"entry": "svg", "source": "corpus_unigram"},
        {"entry": "Sailing Boat", "source": "file:mine.txt"},
    ]


def test_cli_builds_from_wordnet_corpus_and_file(pool_root, pool_table, wordnet, tmp_path):
    user = tmp_path / "user.txt"
    user.write_text("Curate Pipeline\n\nzqxjv unlikely\ndog\n", encoding="utf-8")
    out = tmp_path / "metadata.parquet"
    args = ["metadata", "build", "--out", str(out), "--corpus", str(pool_root / "pool"), "--file", str(user),
            "--min-unigram-count", "3", "--min-bigram-count", "2", "--min-bigram-pmi", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    sources = {row["entry"]: row["source"].split(",") for row in table}
    assert len(sources) == len(table)
    unigrams, bigrams = corpus_ngrams(pool_table.column("text").to_pylist(), 3, 2, 5.0)
    assert sources["dog"] == ["wordnet", f"file:{user}"]
    assert sources["zqxjv unlikely"] == [f"file:{user}"] and sources["Curate Pipeline"] == [f"file:{user}"]
    assert all("corpus_bigram" in sources[b] for b in bigrams if b in sources)
    assert sum("corpus_unigram" in s for s in sources.values()) == len(unigrams)
    assert sum(s == ["wordnet"] for s in sources.values()) > 100_000
    assert load_metadata(out) == [row["entry"] for row in table]
    assert f"{len(table):,} entries" in result.output

    text_out = tmp_path / "metadata.txt"
    result = CliRunner().invoke(main, ["metadata", "build", "--out", str(text_out), "--no-wordnet", "--no-corpus",
                                       "--file", str(user)])
    assert result.exit_code == 0, result.output
    assert text_out.read_text(encoding="utf-8").splitlines()[0] == f"Curate Pipeline\tfile:{user}"
    assert load_metadata(text_out) == ["Curate Pipeline", "zqxjv unlikely", "dog"]


def test_cli_errors_name_what_is_wrong(tmp_path):
    result = CliRunner().invoke(main, ["metadata", "build", "--out", str(tmp_path / "m.txt"), "--wordnet",
                                       str(tmp_path), "--no-corpus"])
    assert result.exit_code == 2 and "data.noun: WordNet data file missing" in result.output
    result = CliRunner().invoke(main, ["metadata", "build", "--out", str(tmp_path / "m.txt"), "--no-wordnet",
                                       "--no-corpus"])
    assert result.exit_code == 2 and "no source left" in result.output


def test_load_metadata_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("dog\n\ncat\n", encoding="utf-8")
    with pytest.raises(MetadataError, match=r"bad.txt: line 2: empty entry"):
        load_metadata(bad)
    with pytest.raises(MetadataError, match="metadata file not found; build one with `curate metadata build"):
        load_metadata(tmp_path / "missing.parquet")
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(build_metadata({"x": ["dog"]}).rename_columns(["name", "source"]), wrong)
    with pytest.raises(MetadataError, match=r"no 'entry' column \(found \['name', 'source'\]\)"):
        load_metadata(wrong)
