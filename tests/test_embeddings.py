"""The embedding store and embedder: entries keyed by uid and content, written once, reused."""

import json
import os
import resource

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import embeddings
from curate.embeddings import (
    VECTOR_COLUMN,
    ClipEmbedder,
    EmbeddingConfig,
    Embeddings,
    EmbeddingStore,
    column_vectors,
    sample_cutoff,
    sample_keys,
    sample_partial,
    uid_hash,
    vector_column,
)
from curate.engines import LocalEngine
from curate.engines.shuffle import EngineFitContext
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stage import Dataset
from curate.stages.semdedup import SemDedup, SemDedupConfig


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


def test_stored_vectors_are_the_models(pool_table, embedding_checkpoint, tmp_path):
    table = pool_table.select(["uid", "text", "image"]).slice(0, 12)
    stored = Embeddings(EmbeddingConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s")))
    fresh = ClipEmbedder(str(embedding_checkpoint)).embed(table["image"].to_pylist(), table["text"].to_pylist())
    got = stored.for_table(table)
    assert got.rows.tolist() == list(range(12)) and not got.failures
    assert np.allclose(got.image, fresh.image, atol=2e-3) and np.allclose(got.text, fresh.text, atol=2e-3)
    assert np.allclose(got.score, fresh.score, atol=1e-5)
    changed = table.set_column(1, "text", pa.array(["another caption"] * 12))
    assert not stored.store.find(sample_keys(changed)).any()


def test_a_pipeline_embeds_every_image_once(faulty_input, embedding_checkpoint, pool_root, tmp_path, monkeypatch):
    """embed + clip_score + every embedding stage on one store: each image reaches the model once,
    and a second run over the same store embeds nothing."""
    calls = []
    original = ClipEmbedder.embed
    monkeypatch.setattr(ClipEmbedder, "embed",
                        lambda self, images, texts: calls.append(len(images)) or original(self, images, texts))
    common = {"checkpoint": str(embedding_checkpoint), "store": str(tmp_path / "store")}
    stages = [{"stage": "decode"}, {"stage": "embed", **common}, {"stage": "clip_score", "top_fraction": 0.9, **common},
              {"stage": "decontaminate_embedding", "eval_data": [str(pool_root / "eval")], "threshold": 0.999,
               **common},
              {"stage": "embed_dedup", "threshold": 0.99, **common}, {"stage": "semdedup", "clusters": 4, **common},
              {"stage": "image_based_filter", "target": [str(pool_root / "eval")], "clusters": 4, **common}]
    pipeline = parse_pipeline({"name": "embed_once", "batch_size": 32, "stages": stages}, "<test>")
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(faulty_input)], tmp_path / "one")
    decoded = next(s for s in stats["stages"] if s["name"] == "decode")["out"]
    eval_rows = sum(pq.read_metadata(p).num_rows for p in (pool_root / "eval").glob("*.parquet"))
    assert sum(calls) == decoded + eval_rows  # pool images once, eval images once (shared by two stages)
    assert len(EmbeddingStore(tmp_path / "store", ClipEmbedder(str(embedding_checkpoint)).fingerprint)) >= decoded
    calls.clear()
    again = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(faulty_input)], tmp_path / "two")
    assert sum(calls) == 0
    assert again["kept"] == stats["kept"]


def test_vector_columns_round_trip_through_parquet(tmp_path):
    vectors = np.random.default_rng(2).normal(size=(50, 12)).astype(np.float32)
    column = vector_column(vectors)
    assert column.type == pa.binary() and len(column) == 50
    pq.write_table(pa.table({VECTOR_COLUMN: column}), tmp_path / "v.parquet")
    back = pq.read_table(tmp_path / "v.parquet").column(VECTOR_COLUMN)
    as_float16 = vectors.astype(np.float16).astype(np.float32)
    assert np.array_equal(column_vectors(back), as_float16)
    sliced = pa.chunked_array([column.slice(3, 10), column.slice(20, 5)])  # chunks that start inside their buffers
    assert np.array_equal(column_vectors(sliced), as_float16[np.r_[3:13, 20:25]])
    assert np.array_equal(column_vectors(column.cast(pa.large_binary()).slice(7, 4)), as_float16[7:11])
    assert column_vectors(vector_column(np.zeros((0, 12), np.float32))).shape == (0, 0)
    with pytest.raises(ValueError, match="float16 vectors of one size"):
        column_vectors(pa.array([b"\x00\x00", b"\x00\x00\x00\x00"], pa.binary()))


def test_the_kmeans_sample_is_the_smallest_uid_hashes_and_stays_bounded(tmp_path, monkeypatch):
    """20,000 fit rows in 8 files: the sample is the 500 rows with the smallest uid hashes (spread
    over the sequential uids, not the first 500), each file sends only rows under the hash bound
    (about 500 in all, not 500 per file), and a bound that turns out too low is widened."""
    rng = np.random.default_rng(3)
    uids = [f"{i:032x}" for i in range(20_000)]
    vectors = rng.normal(size=(len(uids), 8)).astype(np.float32)
    files = []
    for k, rows in enumerate(np.array_split(rng.permutation(len(uids)), 8)):
        files.append(str(tmp_path / f"fit-{k}.parquet"))
        pq.write_table(pa.table({"uid": [uids[i] for i in rows], VECTOR_COLUMN: vector_column(vectors[rows])}),
                       files[-1])
    data = Dataset(tuple(files), len(uids))
    stage = SemDedup(SemDedupConfig(checkpoint="unused.pt", store=str(tmp_path / "store")))
    expected = sorted(np.argsort(uid_hash(pa.array(uids)))[:500].tolist(), key=lambda i: uids[i])
    cutoff = sample_cutoff(len(uids), 500, 0)
    sent = sum(sample_partial(500, cutoff, pq.read_table(f)).num_rows for f in files)
    assert 500 <= sent <= 800
    for sigmas in (embeddings.SAMPLE_SIGMAS, -5.0):  # -5: the first bound holds too few rows, the second enough
        monkeypatch.setattr(embeddings, "SAMPLE_SIGMAS", sigmas)
        context = EngineFitContext(LocalEngine(1, progress=False), tmp_path / "work", 1_000)
        sample = stage.sample(data, context, 500)
        assert sample["uid"].to_pylist() == [uids[i] for i in expected]
        stored = vectors[expected].astype(np.float16).astype(np.float32)
        assert np.array_equal(column_vectors(sample[VECTOR_COLUMN]), stored)
    assert min(expected) < 1_000 and max(expected) > 19_000
    assert len(stage.sample(Dataset(tuple(files[:1]), 2_500), context, 5_000)) == 2_500  # fewer rows than asked: all
