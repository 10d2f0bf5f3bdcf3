"""The base of the global stages that decide on image embeddings (StoredEmbeddingsStage): each
row's vector carried in its fit row, clustered (k-means on a bounded uniform sample, nearest
centroid per row), so every decision is a map or a per-cluster group that the engines distribute.
"""

from __future__ import annotations

import itertools
import math
from functools import cached_property, partial
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.neighbours import KMeansConfig, kmeans, nearest_centroid
from curate.schema import uid_pairs
from curate.stage import ROW_COLUMN, Dataset, FitContext, GlobalStage, Verdict
from curate.stages.embeddings import Embeddings

# a fit row's image embedding: its float16 bytes (binary: Spark reads it, half a list<float>)
VECTOR_COLUMN = "image_vector"
CLUSTER_COLUMN = "cluster"  # a fit row's nearest centroid, the key of the per-cluster decisions
SAMPLE_SIGMAS = 6.0  # room in the k-means sample's hash bound, in standard deviations of the count under it
_HASH_COLUMN = "_hash"


def vector_column(vectors: np.ndarray) -> pa.Array:
    """Vectors (n x dim) as a binary column of their float16 bytes, one value per row."""
    data = np.ascontiguousarray(vectors, np.float16)
    width = 2 * data.shape[1] if data.ndim == 2 else 0
    offsets = np.arange(len(data) + 1, dtype=np.int64) * width
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{len(data)} vectors of {width} bytes exceed one binary column's 2 GiB: use smaller batches")
    return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(data)])


def column_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The vectors (float32, n x dim) of a column made by `vector_column` (binary or large_binary, any chunks)."""
    parts = []
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if not len(chunk):
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        widths = np.diff(offsets)
        if chunk.null_count or widths[0] % 2 or widths[0] == 0 or (widths != widths[0]).any():
            raise ValueError(f"{VECTOR_COLUMN}: expected non-null float16 vectors of one size, got values of "
                             f"{sorted(set(widths.tolist()))[:5]} bytes ({chunk.null_count} null)")
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        parts.append(data.view(np.float16).reshape(len(chunk), -1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads nearby inputs uniformly."""
    x = values.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uid_hash(uids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A uniform 64-bit hash (uint64) of each uid, a function of the uid alone (its DataComp uid
    pair, mixed): sequential uids spread like random ones."""
    pairs = uid_pairs(uids)
    return splitmix64(pairs["f0"] ^ splitmix64(pairs["f1"]))


def sample_cutoff(rows: int, size: int, attempt: int) -> int | None:
    """A bound under which about `size` of `rows` uniform 64-bit hashes fall, with SAMPLE_SIGMAS
    standard deviations of room, doubled per `attempt`; None when the sample is every row."""
    expected = (size + SAMPLE_SIGMAS * math.sqrt(size)) * 2**attempt
    return None if expected >= rows else int(expected / rows * 2**64)


def _smallest(size: int, table: pa.Table) -> pa.Table:
    return table.sort_by([(_HASH_COLUMN, "ascending"), ("uid", "ascending")]).slice(0, size)


def sample_partial(size: int, cutoff: int | None, table: pa.Table) -> pa.Table:
    """A batch's fit rows (uid, vector) whose uid hash is under `cutoff` (None: any), at most the
    `size` smallest, with their hash."""
    hashes = uid_hash(table.column("uid"))
    keep = np.arange(len(hashes)) if cutoff is None else np.flatnonzero(hashes < np.uint64(cutoff))
    rows = table.select(["uid", VECTOR_COLUMN]).take(pa.array(keep, pa.int64()))
    return _smallest(size, rows.append_column(_HASH_COLUMN, pa.array(hashes[keep], pa.uint64())))


def sample_merge(size: int, parts: list[pa.Table | None]) -> pa.Table | None:
    """The `size` rows with the smallest hashes of partial samples (None when there are none)."""
    parts = [p for p in parts if p is not None]
    return _smallest(size, pa.concat_tables(parts)) if parts else None


def with_clusters(centroids: np.ndarray | None, table: pa.Table) -> pa.Table:
    """Fit rows with the nearest centroid of each (FAISS), or all in cluster 0 without centroids."""
    clusters = (np.zeros(table.num_rows, np.int64) if centroids is None
                else nearest_centroid(column_vectors(table.column(VECTOR_COLUMN)), centroids))
    return table.append_column(CLUSTER_COLUMN, pa.array(clusters, pa.int64()))


def cluster_runs(table: pa.Table) -> tuple[pa.Table, list[tuple[int, int]]]:
    """A partition's fit rows sorted by cluster, then uid (so a decision does not depend on how
    the rows arrived), and the [start, end) rows of each cluster."""
    table = table.sort_by([(CLUSTER_COLUMN, "ascending"), ("uid", "ascending")])
    clusters = table.column(CLUSTER_COLUMN).to_numpy()
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]]) if len(clusters) else np.zeros(0, np.int64)
    return table, list(zip(starts.tolist(), np.r_[starts[1:], len(clusters)].tolist()))


class StoredEmbeddingsStage(GlobalStage):
    """A global stage that decides on image embeddings, clustered.

    Fit pass: `process` makes sure every row is in the store; its fit rows are uid, clip_score
    (NaN where no earlier stage wrote one), the image vector read back from the store (float16
    bytes in VECTOR_COLUMN) and _row. Fit: spherical k-means on a bounded uniform sample, on the
    driver (`fit_centroids`); every row's nearest centroid in a map (`with_clusters`); then a
    decision per cluster in the engine's group, or per row in a map. The operations ship module
    functions with the centroids and the config, never the stage or its model; the driver opens
    the store only to embed something itself (the image-based filter's target set). A subclass's
    config is a KMeansConfig."""

    reads = ("uid", "image", "text")
    reasons: ClassVar[tuple[str, ...]] = ("unembeddable_image",)
    uses_model = True

    @cached_property
    def embeddings(self) -> Embeddings:
        """The stage's embedder and store, made on first use (in workers by `setup`)."""
        return Embeddings(self.config)

    def setup(self) -> None:
        self.embeddings  # noqa: B018 - opens the store and shares the worker's embedder

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        for i, message in self.embeddings.for_table(table).failures.items():
            verdict.reject(i, "unembeddable_image", message)
        return verdict

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """uid, clip_score, the stored image vector and _row of each row `process` kept (and stored)."""
        if "clip_score" in table.column_names:
            scores = pc.fill_null(pc.cast(table.column("clip_score"), pa.float32()), math.nan)
        else:
            scores = pa.array(np.full(table.num_rows, math.nan, np.float32))
        store = self.embeddings.store
        vectors = store.images(store.keys(table)) if table.num_rows else np.zeros((0, 0), np.float32)
        return pa.table({"uid": table.column("uid"), "clip_score": scores, VECTOR_COLUMN: vector_column(vectors),
                         ROW_COLUMN: table.column(ROW_COLUMN)})

    def sample(self, data: Dataset, context: FitContext, size: int) -> pa.Table:
        """The fit rows (uid, vector) with the `size` smallest uid hashes, sorted by uid: a uniform
        sample, the same however the rows are partitioned. Batches send only rows under a hash
        bound set for about `size` rows in all (doubled on the rare pass that finds fewer), so the
        driver holds one sample, not one per batch. `data` must have rows."""
        for attempt in itertools.count():
            cutoff = sample_cutoff(data.rows, size, attempt)
            found = context.aggregate(data, partial(sample_partial, size, cutoff), partial(sample_merge, size))
            if cutoff is None or (found is not None and found.num_rows >= size):
                return found.sort_by("uid")

    def fit_centroids(self, data: Dataset, context: FitContext, clusters: int,
                      spherical: bool = True) -> tuple[np.ndarray, int]:
        """Centroids of k-means (seeded, one thread; spherical: unit-norm centroids, else L2) with
        `clusters` clusters (fewer if the sample is smaller), fitted on the driver on the `sample`
        of `config.sample_rows(clusters)` rows; and the sample's size."""
        config: KMeansConfig = self.config
        sample = self.sample(data, context, config.sample_rows(clusters))
        vectors = column_vectors(sample.column(VECTOR_COLUMN))
        centroids, _ = kmeans(vectors, clusters, config.seed, config.niter, spherical)
        return centroids, sample.num_rows

    def fit_stats(self, state: dict) -> dict:
        """How many clusters the fit made and how many rows k-means saw."""
        if "clusters" not in state:
            return {}
        return {"kind": "embedding_clusters", "clusters": state["clusters"], "sample_rows": state["sample_rows"]}
