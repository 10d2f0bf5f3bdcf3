"""Embedding dedup stage: near-duplicate images by CLIP image-embedding cosine, searched with FAISS.

Distributed: the pool is cut into clusters of about `cluster_rows` rows (spherical k-means on a
bounded sample, each row's nearest centroid in a map), and the neighbour search and grouping
run inside each cluster, in the engine's group. A pool of at most `cluster_rows` rows is one
cluster (no k-means), searched whole: exactly the pairs a single search finds. Above that, a
pair whose two images fall in different clusters is not found: near copies (cosine >= 0.95)
mostly share their nearest centroid, but two copies on either side of a cluster boundary stay
apart; a larger `cluster_rows` misses fewer such pairs and needs more memory per cluster."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.neighbours import FLAT_MAX_ROWS, KMeansConfig, SearchConfig, components, similar_pairs
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


class EmbedDedupConfig(StoredEmbeddingConfig, SearchConfig, KMeansConfig):
    """Parameters of the embed_dedup stage."""

    threshold: float = Field(0.95, ge=-1, le=1, description="image cosine at or above which two images are duplicates")
    cluster_rows: int = Field(
        FLAT_MAX_ROWS, gt=1, description="rows per cluster searched together: a pool of up to this many is searched "
                                         "whole; a larger one is split by k-means into ceil(rows / cluster_rows) "
                                         "clusters, and pairs across two clusters are not found")


class EmbedDedup(StoredEmbeddingsStage):
    """Drop near-duplicate images: CLIP image cosine >= threshold (FAISS), grouped transitively; per
    group the highest clip_score, then the smallest uid, is kept."""

    name = "embed_dedup"
    Config = EmbedDedupConfig
    reasons = StoredEmbeddingsStage.reasons + ("near_duplicate_embedding",)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """Clusters of about `cluster_rows` rows (one, without k-means, for a pool that small),
        each searched and grouped by `drop_near_duplicates` in the engine's group."""
        if not data.rows:
            return Fitted()
        clusters = math.ceil(data.rows / self.config.cluster_rows)
        centroids, sample_rows = self.fit_centroids(data, context, clusters) if clusters > 1 else (None, 0)
        assigned = context.map(data, partial(with_clusters, centroids), "clusters")
        rejected = context.group(assigned, [CLUSTER_COLUMN], partial(drop_near_duplicates, self.config),
                                 "near_duplicates")
        if centroids is None:
            return Fitted({"clusters": 1, "sample_rows": 0}, rejected)
        return Fitted({"centroids": centroids, "clusters": len(centroids), "sample_rows": sample_rows}, rejected)


def drop_near_duplicates(config: EmbedDedupConfig, table: pa.Table) -> pa.Table:
    """In each of a partition's whole clusters: groups are the connected components of the
    pairs at or above the threshold (each vector looks at its `neighbours` nearest); a group
    keeps its highest clip_score (NaN lowest), then its smallest uid, and the others name it."""
    table, runs = cluster_runs(table)
    vectors = column_vectors(table.column(VECTOR_COLUMN))
    scores = table.column("clip_score").to_numpy()
    dropped, keepers = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, end in runs:
        if end - start < 2:
            continue
        group = components(end - start, *similar_pairs(vectors[start:end], config.threshold, config))
        position = np.arange(end - start)  # rows are in uid order: position order is uid order
        order = np.lexsort((position, -np.nan_to_num(scores[start:end], nan=-np.inf), group))
        _, first = np.unique(group[order], return_index=True)
        keeper = np.empty(group.max() + 1, np.int64)
        keeper[group[order][first]] = order[first]
        lost = np.flatnonzero(keeper[group] != position)
        dropped.append(start + lost)
        keepers.append(start + keeper[group[lost]])
    dropped, keepers = np.concatenate(dropped), np.concatenate(keepers)
    return rejections(table.column(ROW_COLUMN).take(pa.array(dropped)), "near_duplicate_embedding",
                      table.column("uid").take(pa.array(keepers)))
