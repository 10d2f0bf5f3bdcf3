"""Near-duplicate dedup stage: copies of one image (re-encoded, cropped, recoloured, bordered,
mirrored...) grouped into connected components by the engine's shuffles; each component keeps
its smallest uid, the others are rejected as `near_duplicate` with the kept uid as value. Three
methods (`method`, curate/stages/copy_method.py):

- `phash`: one 64-bit pHash (imagehash) of the image, within a Hamming `radius` (default 4). The
  default without a descriptor checkpoint.
- `hashes`: a 192-bit code, pHash, dHash and wavelet hash of the image normalised against the
  edits a copy survives (curate.copyhash.copy_hashes: frame trimmed, grey, auto-contrast,
  mirrored to put more ink on the left), within a `radius` of the three Hamming distances summed.
- `descriptor`: a learned copy descriptor (`curate train copydetect`, curate/models/copydetect.py),
  image cosine >= `threshold` (default: the one calibrated when the checkpoint was trained). The
  default when a `checkpoint` is given.
- `verified`: that descriptor's `candidates` nearest of each image (in its cluster, as below),
  each candidate pair a copy when at least `inliers` of its SIFT keypoints (curate.copyverify,
  packed per image in `process`, carried in the fit rows) agree on one similarity transform,
  of the image as it is or mirrored: crops, rotations, borders and overlaid text keep them.

The hash methods search exactly within the radius (curate/pigeonhole.py: identical codes meet,
then pigeonhole buckets of code chunks, then min-label propagation), over narrow fit rows (uid,
node, code words, _row), and no process holds the pool's codes.

The descriptor method carries each row's descriptor (float16 bytes) in its fit rows and searches
like `embed_dedup`: a pool of up to `cluster_rows` rows is one cluster, searched whole (FAISS,
exact: each vector's `neighbours` nearest at or above the threshold); a larger one is cut by
spherical k-means on a bounded sample, and a pair whose images fall in two clusters is not found
(what it gives up for memory bounded by the largest cluster). Components are those of the pairs
inside each cluster.

Keep rule: connected components, as NeMo Curator and Data-Juicer do. A chain a~b~c merges a and
c even when they are more than the radius apart. It depends only on the codes (or descriptors)
and uids, never on the engine, the workers or the partitioning. A digest collision (two codes,
one node) would merge two images: about n^2 / 2^65 expected pairs, 3e-6 at 10M images.
"""

from __future__ import annotations

import math
from functools import cached_property, partial
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.copyhash import HASH_WORDS, copy_hashes, phash
from curate.copyverify import keypoints
from curate.neighbours import FLAT_MAX_ROWS, KMeansConfig, SearchConfig, kmeans
from curate.pigeonhole import (
    bucket_edges,
    count_messages,
    fit_schema,
    hash_chunks,
    kept_names,
    propagate,
    reject_members,
)
from curate.schema import set_column
from curate.stage import ROW_COLUMN, Dataset, FitContext, Fitted, GlobalStage, Verdict, map_rows
from curate.stages.clustered import (
    CLUSTER_COLUMN,
    VECTOR_COLUMN,
    StoredEmbeddingsStage,
    column_vectors,
    splitmix64,
    vector_column,
    with_clusters,
)
from curate.stages.copy_method import KEYPOINTS_COLUMN, CopyConfig, Descriptors, descriptor_duplicates
from curate.stages.input_columns import given_column, with_given_column

DESCRIPTOR_COLUMN = "copy_descriptor"


def node_ids(codes: np.ndarray) -> np.ndarray:
    """A code's graph node (int64): a one-word code itself, a longer one a 64-bit digest of its words
    (splitmix64 chained over them)."""
    if codes.shape[1] == 1:
        return codes[:, 0].astype(np.int64)
    node = splitmix64(codes[:, 0].view(np.uint64))
    for word in codes[:, 1:].T:
        node = splitmix64(node ^ word.view(np.uint64))
    return node.view(np.int64)


class NearDedupConfig(CopyConfig, SearchConfig, KMeansConfig):
    """Parameters of the near_dedup stage."""

    stage_name: ClassVar[str] = "near_dedup"

    hash_column: str | None = Field(
        None, description="phash: read 64-bit pHashes (int64) from this input column instead of hashing the images: "
                          "a metadata run, or hashes computed once before; a null hash is phash_failed")
    cluster_rows: int = Field(
        FLAT_MAX_ROWS, gt=1, description="descriptor: rows per cluster searched together: a pool of up to this many "
                                         "is searched whole; a larger one is split by k-means into "
                                         "ceil(rows / cluster_rows) clusters, and pairs across two are not found")

    @model_validator(mode="after")
    def _hash_column_is_a_phash(self):
        if self.hash_column and self.chosen != "phash":
            raise ValueError(f"hash_column holds pHashes: it is for method phash, not {self.chosen}")
        return self

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """A hash column needs no image: the stage runs on metadata."""
        if self.hash_column:
            return [("uid", self.hash_column)]
        return [self.descriptor_reads()] if self.uses_descriptor else [("uid", "image")]


class NearDedup(GlobalStage):
    """Drop near-duplicates (copies): pHash, a normalised multi-hash or a learned copy descriptor,
    grouped transitively (connected components); each group keeps its smallest uid."""

    name = "near_dedup"
    Config = NearDedupConfig
    reads = ("uid", "image")
    writes = {"phash": pa.int64(), "copy_hashes": pa.list_(pa.int64()), DESCRIPTOR_COLUMN: pa.binary(),
              KEYPOINTS_COLUMN: pa.binary()}
    reasons = ("phash_failed", "hash_failed", "descriptor_failed", "near_duplicate")

    @property
    def uses_model(self) -> bool:
        """A descriptor is a model: engines run the stage in long-lived workers."""
        return self.config.uses_descriptor

    @property
    def words(self) -> int:
        """Code words of the hash method (1: pHash, 3: the multi-hash)."""
        return HASH_WORDS if self.config.chosen == "hashes" else 1

    @cached_property
    def descriptors(self) -> Descriptors:
        """The descriptor model and store, made on first use (in workers by `setup`)."""
        return Descriptors(self.config)

    def setup(self) -> None:
        if self.config.uses_descriptor:
            self.descriptors  # noqa: B018 - loads the checkpoint's config and opens the store

    def process(self, table: pa.Table) -> Verdict:
        chosen = self.config.chosen
        if self.config.hash_column:
            return self._read_hashes(table)
        if self.config.uses_descriptor:
            return self._describe(table)
        fn, column, reason = (phash, "phash", "phash_failed") if chosen == "phash" else (copy_hashes, "copy_hashes",
                                                                                        "hash_failed")
        hashes, failures = map_rows(table.column("image").to_pylist(), fn)
        signed = [None if h is None else np.array(h, np.uint64).view(np.int64).tolist() for h in hashes]
        verdict = Verdict(set_column(table, column, signed, self.writes[column]))
        for i, message in failures.items():
            verdict.reject(i, reason, message)
        return verdict

    def _describe(self, table: pa.Table) -> Verdict:
        """Each image's descriptor (float16 bytes; null where it failed) and, for verified, its packed
        keypoints (null where the descriptor failed)."""
        rows, vectors, failures = self.descriptors.for_table(table)
        values = pa.nulls(table.num_rows, pa.binary())
        if len(rows):
            mask = np.zeros(table.num_rows, bool)
            mask[rows] = True
            values = pc.replace_with_mask(values, pa.array(mask), vector_column(vectors))
        table = set_column(table, DESCRIPTOR_COLUMN, values)
        if self.config.chosen == "verified":
            images = table.column("image").to_pylist()
            packed, failed = map_rows(images, keypoints)
            failures = {**failed, **failures}
            table = set_column(table, KEYPOINTS_COLUMN, [None if i in failures else p for i, p in enumerate(packed)],
                               pa.binary())
        verdict = Verdict(table)
        for i, message in failures.items():
            verdict.reject(i, "descriptor_failed", message)
        return verdict

    def _read_hashes(self, table: pa.Table) -> Verdict:
        """pHashes from the input's column (as int64: the 64 bits as they are)."""
        column = self.config.hash_column
        hashes = given_column(table, self.name, "hash_column", column)
        if not pa.types.is_integer(hashes.type):
            raise ValueError(f"near_dedup: hash_column {column!r} holds {hashes.type}, expected 64-bit integers")
        hashes = pc.cast(hashes, pa.uint64()).cast(pa.int64(), safe=False) if pa.types.is_unsigned_integer(
            hashes.type) else pc.cast(hashes, pa.int64())
        return with_given_column(table, "phash", hashes, pc.is_null(hashes), "phash_failed", column)

    def fit_rows(self, table: pa.Table) -> pa.Table:
        """uid, node, code words and _row of each hashed row; uid, descriptor and _row for the descriptor
        (and the packed keypoints for verified)."""
        if self.config.uses_descriptor:
            columns = {"uid": table.column("uid"), VECTOR_COLUMN: table.column(DESCRIPTOR_COLUMN).cast(pa.binary())}
            if self.config.chosen == "verified":
                columns[KEYPOINTS_COLUMN] = table.column(KEYPOINTS_COLUMN).cast(pa.binary())
            return pa.table({**columns, ROW_COLUMN: table.column(ROW_COLUMN)})
        if self.words == 1:
            codes = table.column("phash").to_numpy().reshape(-1, 1)
        else:
            flat = pc.list_flatten(table.column("copy_hashes")).to_numpy()
            codes = flat.reshape(table.num_rows, self.words)
        columns = [table.column("uid"), pa.array(node_ids(codes))] + [pa.array(codes[:, i]) for i in range(self.words)]
        return pa.Table.from_arrays(columns + [table.column(ROW_COLUMN)], schema=fit_schema(self.words))

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        if self.config.uses_descriptor:
            return self._fit_descriptors(data, context)
        named, radius, words = Dataset((), 0), self.config.hash_radius, self.words
        if radius:
            chunks = context.group(data, ["node"], partial(hash_chunks, radius, words), "chunks")
            graph = context.group(chunks, ["key"], partial(bucket_edges, radius, words), "edges")
            while graph.rows and context.aggregate(graph, count_messages, sum):
                graph = context.group(graph, ["node"], propagate, "labels")
            named = context.map(graph, partial(kept_names, words), "kept")
        rows = Dataset(data.files + named.files, data.rows + named.rows)
        return Fitted(rejected=context.group(rows, ["node"], partial(reject_members, words), "near_duplicates"))

    def _fit_descriptors(self, data: Dataset, context: FitContext) -> Fitted:
        """Clusters of about `cluster_rows` rows (one, without k-means, for a pool that small), each
        searched and grouped by `descriptor_duplicates` in the engine's group."""
        if not data.rows:
            return Fitted()
        clusters, centroids = math.ceil(data.rows / self.config.cluster_rows), None
        if clusters > 1:  # k-means on a bounded uniform sample, as the embedding stages fit theirs
            sample = StoredEmbeddingsStage.sample(self, data, context, self.config.sample_rows(clusters))
            centroids, _ = kmeans(column_vectors(sample.column(VECTOR_COLUMN)), clusters, self.config.seed,
                                  self.config.niter, spherical=True)
        assigned = context.map(data, partial(with_clusters, centroids), "clusters")
        threshold, inliers = self.descriptors.threshold, self.config.verify_inliers
        neighbours = self.config.neighbours if inliers is None else self.config.candidates
        search = SearchConfig(index="flat", neighbours=neighbours)
        rejected = context.group(assigned, [CLUSTER_COLUMN], partial(descriptor_duplicates, threshold, search, inliers),
                                 "near_duplicates")
        state = {"clusters": 1 if centroids is None else len(centroids), "threshold": threshold}
        return Fitted(state if inliers is None else {**state, "inliers": inliers}, rejected)

    def fit_stats(self, state: dict) -> dict:
        """The descriptor fit's clusters and threshold (and inliers, verified)."""
        if "clusters" not in state:
            return {}
        return {"kind": "copy_descriptor", **state}
