"""DataComp's image-based filter: cluster the pool's CLIP image embeddings, keep the clusters
that are nearest to some image of a target set (DataComp: ImageNet's training images)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from curate.embeddings import StoredEmbeddingConfig, StoredEmbeddingsStage, embed_paths
from curate.neighbours import SearchConfig, build_index, search, spherical_kmeans


class ImageBasedFilterConfig(StoredEmbeddingConfig):
    """Parameters of the image_based_filter stage."""

    target: list[str] = Field(..., min_length=1, description="target image sets (Parquet/WebDataset/folders), "
                                                              "e.g. an eval suite's training split")
    clusters: int = Field(100, gt=0, description="k-means clusters over the pool (DataComp: 100,000 at 12.8M)")
    niter: int = Field(20, gt=0, description="k-means iterations")
    seed: int = Field(0, description="k-means seed")


class ImageBasedFilter(StoredEmbeddingsStage):
    """DataComp image-based filter: k-means on pool image embeddings; keep the samples in clusters that are the nearest cluster of some target image."""

    name = "image_based_filter"
    Config = ImageBasedFilterConfig
    reasons = StoredEmbeddingsStage.reasons + ("cluster_not_targeted",)

    def decide(self, uids: list[str], vectors: np.ndarray, scores: np.ndarray) -> dict[str, tuple[str, str]]:
        """Target images are embedded with the same scorer (cached in the same store)."""
        centroids, assignment = spherical_kmeans(vectors, self.config.clusters, self.config.seed, self.config.niter)
        _, targets = embed_paths(self.config.target, self.embeddings)
        if not len(targets):
            raise ValueError(f"image_based_filter: no decodable image in target {self.config.target}")
        _, nearest, _ = search(build_index(centroids, SearchConfig(index="flat")), targets, 1, -np.inf)
        wanted = np.isin(assignment, nearest)
        return {uids[i]: ("cluster_not_targeted", str(assignment[i])) for i in np.flatnonzero(~wanted)}
