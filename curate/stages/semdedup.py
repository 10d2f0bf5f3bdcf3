"""SemDeDup stage (Abbas et al., 2023): spherical k-means on CLIP image embeddings, then
within each cluster drop samples semantically too close to another one.

Distributed: k-means is fitted on a bounded uniform sample of the pool (`fit_sample`), every
row gets its nearest centroid in a map, and each cluster is decided whole in the engine's
group, so no process holds more than a sample and its largest clusters."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.neighbours import KMeansConfig
from curate.stage import ROW_COLUMN, Dataset, FitContext, Fitted, rejections
from curate.stages.clustered import (
    CLUSTER_COLUMN,
    VECTOR_COLUMN,
    StoredEmbeddingsStage,
    cluster_runs,
    column_vectors,
    with_clusters,
)
from curate.stages.embeddings import StoredEmbeddingConfig

BLOCK = 4096  # the within-cluster similarity matrix is computed in BLOCK x BLOCK tiles


class SemDedupConfig(StoredEmbeddingConfig, KMeansConfig):
    """Parameters of the semdedup stage."""

    clusters: int = Field(100, gt=0, description="k-means clusters (the paper: 50,000 for LAION-440M)")
    epsilon: float = Field(0.07, gt=0, lt=1,
                           description="drop a sample whose cosine to an earlier one is > 1 - epsilon")


class SemDedup(StoredEmbeddingsStage):
    """SemDeDup: spherical k-means on image embeddings; in each cluster a sample with cosine > 1 - epsilon
    to an earlier one (farther from the centroid) is dropped."""

    name = "semdedup"
    Config = SemDedupConfig
    reasons = StoredEmbeddingsStage.reasons + ("semantic_duplicate",)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """Centroids from the sample, each row's cluster (a map), each cluster decided by
        `drop_semantic_duplicates` in the engine's group."""
        if not data.rows:
            return Fitted()
        centroids, sample_rows = self.fit_centroids(data, context, self.config.clusters)
        assigned = context.map(data, partial(with_clusters, centroids), "clusters")
        decide = partial(drop_semantic_duplicates, centroids, self.config.epsilon)
        rejected = context.group(assigned, [CLUSTER_COLUMN], decide, "semantic_duplicates")
        return Fitted({"centroids": centroids, "clusters": len(centroids), "sample_rows": sample_rows}, rejected)


def drop_semantic_duplicates(centroids: np.ndarray, epsilon: float, table: pa.Table) -> pa.Table:
    """The reference implementation's rule (keep_hard) on a partition's whole clusters: a
    cluster's members are ordered by cosine distance to the centroid, farthest first (ties:
    smaller uid first); member j is dropped when its largest cosine to any member before it
    exceeds 1 - epsilon, with that member's uid as the value."""
    table, runs = cluster_runs(table)
    vectors = column_vectors(table.column(VECTOR_COLUMN))
    clusters = table.column(CLUSTER_COLUMN).to_numpy()
    dropped, earlier = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, end in runs:
        members = np.arange(start, end)  # in uid order
        closeness = vectors[start:end] @ centroids[clusters[start]]
        members = members[np.lexsort((members, closeness))]  # farthest from the centroid first
        member_vectors = vectors[members]
        for lo in range(1, len(members), BLOCK):
            hi = min(lo + BLOCK, len(members))
            best, closest = nearest_earlier(member_vectors, lo, hi)
            columns = np.flatnonzero(closest > 1 - epsilon)
            dropped.append(members[lo + columns])
            earlier.append(members[best[columns]])
    dropped, earlier = np.concatenate(dropped), np.concatenate(earlier)
    return rejections(table.column(ROW_COLUMN).take(pa.array(dropped)), "semantic_duplicate",
                      table.column("uid").take(pa.array(earlier)))


def nearest_earlier(vectors: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row j in [lo, hi): the earlier row (index < j) with the largest cosine, first on
    ties, and that cosine; tile by tile, so memory does not grow with the cluster."""
    columns = vectors[lo:hi].T
    best = np.zeros(hi - lo, np.int64)
    closest = np.full(hi - lo, -np.inf, np.float32)
    for top in range(0, hi, BLOCK):
        bottom = min(top + BLOCK, hi)
        sims = vectors[top:bottom] @ columns
        sims[np.arange(top, bottom)[:, None] >= np.arange(lo, hi)[None, :]] = -np.inf
        at = sims.argmax(axis=0)
        value = sims[at, np.arange(hi - lo)]
        better = value > closest  # strict: an earlier tile wins a tie, as one argmax would
        best[better], closest[better] = top + at[better], value[better]
    return best, closest
