"""A stage's embeddings: the embedder's vectors as the store keeps them, each image embedded once per
store, and the fit rows of the stages on clustered vectors (vector columns, the k-means sample)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine
from curate.engines.shuffle import EngineFitContext
from curate.io.embedding_store import EmbeddingStore, sample_keys
from curate.models.embedder import ClipEmbedder
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stage import Dataset
from curate.stages import clustered
from curate.stages.clustered import (
    VECTOR_COLUMN,
    column_vectors,
    sample_cutoff,
    sample_partial,
    uid_hash,
    vector_column,
)
from curate.stages.embeddings import EmbeddingConfig, Embeddings
from curate.stages.semdedup import SemDedup, SemDedupConfig


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
    for sigmas in (clustered.SAMPLE_SIGMAS, -5.0):  # -5: the first bound holds too few rows, the second enough
        monkeypatch.setattr(clustered, "SAMPLE_SIGMAS", sigmas)
        context = EngineFitContext(LocalEngine(1, progress=False), tmp_path / "work", 1_000)
        sample = stage.sample(data, context, 500)
        assert sample["uid"].to_pylist() == [uids[i] for i in expected]
        stored = vectors[expected].astype(np.float16).astype(np.float32)
        assert np.array_equal(column_vectors(sample[VECTOR_COLUMN]), stored)
    assert min(expected) < 1_000 and max(expected) > 19_000
    assert len(stage.sample(Dataset(tuple(files[:1]), 2_500), context, 5_000)) == 2_500  # fewer rows than asked: all
