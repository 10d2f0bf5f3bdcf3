"""SemDeDup stage (Abbas et al., 2023): spherical k-means on CLIP image embeddings, then
within each cluster drop samples semantically too close to another one."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from curate.embeddings import StoredEmbeddingConfig, StoredEmbeddingsStage
from curate.neighbours import spherical_kmeans

BLOCK = 4096  # the within-cluster similarity matrix is computed in BLOCK x BLOCK tiles


class SemDedupConfig(StoredEmbeddingConfig):
    """Parameters of the semdedup stage."""

    clusters: int = Field(100, gt=0, description="k-means clusters (the paper: 50,000 for LAION-440M)")
    epsilon: float = Field(0.07, gt=0, lt=1, description="drop a sample whose cosine to an earlier one is > 1 - epsilon")
    niter: int = Field(20, gt=0, description="k-means iterations")
    seed: int = Field(0, description="k-means seed")


class SemDedup(StoredEmbeddingsStage):
    """SemDeDup: spherical k-means on image embeddings; in each cluster a sample with cosine > 1 - epsilon to an earlier one (farther from the centroid) is dropped."""

    name = "semdedup"
    Config = SemDedupConfig
    reasons = StoredEmbeddingsStage.reasons + ("semantic_duplicate",)

    def decide(self, uids: list[str], vectors: np.ndarray, scores: np.ndarray) -> dict[str, tuple[str, str]]:
        """The reference implementation's rule (keep_hard): a cluster's members are ordered by
        cosine distance to the centroid, farthest first (ties: smaller uid first); member j is
        dropped when its largest cosine to any member before it exceeds 1 - epsilon, with that
        member's uid as the value."""
        centroids, assignment = spherical_kmeans(vectors, self.config.clusters, self.config.seed, self.config.niter)
        dropped = {}
        for cluster in range(len(centroids)):
            members = np.flatnonzero(assignment == cluster)
            closeness = vectors[members] @ centroids[cluster]
            members = members[np.lexsort((members, closeness))]  # farthest from the centroid first
            member_vectors = vectors[members]
            for lo in range(1, len(members), BLOCK):
                hi = min(lo + BLOCK, len(members))
                best, closest = nearest_earlier(member_vectors, lo, hi)
                for col in np.flatnonzero(closest > 1 - self.config.epsilon):
                    dropped[uids[members[lo + col]]] = ("semantic_duplicate", uids[members[best[col]]])
        return dropped


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
