"""The embedding store: entries keyed by uid and content, written once, reused, compacted."""

import json
import os
import resource

import numpy as np
import pytest

from curate.io.embedding_store import EmbeddingStore


def test_store_round_trip_and_content_keys(tmp_path):
    store = EmbeddingStore(tmp_path / "store", "model-a")
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    keys = [("a", 1, 2), ("b", 3, 4), ("c", 5, 6)]
    store.put(keys, image, text, np.array([0.1, 0.2, 0.3], np.float32))
    files = sorted(p.name for p in (tmp_path / "store").iterdir())
    store.put(keys, image, text, np.array([0.1, 0.2, 0.3], np.float32))  # the same rows: the same shard file
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == files and len(files) == 3
    reopened = EmbeddingStore(tmp_path / "store", "model-a")
    got_image, got_text, scores = reopened.get([keys[2], keys[0]])
    assert np.array_equal(got_image, image[[2, 0]].astype(np.float16).astype(np.float32))
    assert np.array_equal(got_text, text[[2, 0]].astype(np.float16).astype(np.float32))
    assert scores.tolist() == pytest.approx([0.3, 0.1])
    # same uid, other image bytes: not the stored sample
    assert reopened.find([("a", 1, 2), ("a", 9, 2), ("z", 1, 2)]).tolist() == [True, False, False]
    with pytest.raises(KeyError, match="1 sample"):
        reopened.get([("a", 9, 2)])
    assert json.loads((tmp_path / "store" / "meta.json").read_text())["dim"] == 8
    with pytest.raises(ValueError, match="another model"):
        EmbeddingStore(tmp_path / "store", "model-b")


def test_store_compacts_and_reads_more_shards_than_open_files(tmp_path):
    rng = np.random.default_rng(1)
    limit = len(os.listdir("/proc/self/fd")) + 32  # this process's open files (Ray, Spark, Java...) and a few more
    shards = limit + 60
    keys = [(f"u{i}", i, -i) for i in range(shards * 2)]
    image, text = rng.normal(size=(2, len(keys), 4)).astype(np.float32)
    writer = EmbeddingStore(tmp_path / "store", "m")
    for s in range(shards):  # one shard per batch of two, as workers commit them
        rows = slice(2 * s, 2 * s + 2)
        writer.put(keys[rows], image[rows], text[rows], np.full(2, s, np.float32))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # fewer files than shards: none may stay open
    try:
        reader = EmbeddingStore(tmp_path / "store", "m")  # indexed before the compaction
        got_image, got_text, scores = reader.get(keys)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert np.array_equal(got_image, image.astype(np.float16).astype(np.float32))
    assert scores.tolist() == [k // 2 for k in range(len(keys))]
    assert not writer.compact(at_least=shards + 1)
    assert writer.compact(at_least=shards)
    assert sorted(p.suffix for p in (tmp_path / "store").iterdir()) == [".json", ".npy", ".parquet"]
    assert writer.shard_count == 1 and len(writer) == len(keys)
    again = reader.get(keys[::-1])  # its shards are gone: it re-indexes and reads the merged one
    assert np.array_equal(again[1], got_text[::-1]) and np.array_equal(again[2], scores[::-1])
    assert np.array_equal(reader.images(keys[:3]), got_image[:3])
    # a compaction interrupted between its deletions leaves a Parquet without vectors: ignored, then removed
    leftover = tmp_path / "store" / "0123.parquet"
    leftover.write_bytes((tmp_path / "store").glob("*.parquet").__next__().read_bytes())
    assert np.array_equal(EmbeddingStore(tmp_path / "store", "m").get(keys)[0], got_image)
    writer.put([("new", 0, 0)], image[:1], text[:1], np.zeros(1, np.float32))  # a second shard...
    assert writer.compact(at_least=2) and not leftover.exists()  # ...and the compaction removes the leftover
