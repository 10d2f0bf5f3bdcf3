"""DataComp's image-based filter: cluster the pool's CLIP image embeddings, keep the clusters
that are nearest to some image of a target set (DataComp: ImageNet's training images).

Distributed: k-means is fitted on a bounded uniform sample of the pool (`fit_sample`) and the
target set (small) is embedded on the driver; a map then rejects each row whose nearest
centroid is no target's, so no shuffle is needed."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.embeddings import VECTOR_COLUMN, StoredEmbeddingConfig, StoredEmbeddingsStage, column_vectors, embed_paths
from curate.neighbours import KMeansConfig, nearest_centroid
from curate.stage import ROW_COLUMN, Dataset, FitContext, Fitted, rejections


class ImageBasedFilterConfig(StoredEmbeddingConfig, KMeansConfig):
    """Parameters of the image_based_filter stage."""

    target: list[str] = Field(..., min_length=1, description="target image sets (Parquet/WebDataset/folders), "
                                                              "e.g. an eval suite's training split")
    clusters: int = Field(100, gt=0, description="k-means clusters over the pool (DataComp: 100,000 at 12.8M)")


class ImageBasedFilter(StoredEmbeddingsStage):
    """DataComp image-based filter: k-means on pool image embeddings; keep the samples in clusters that are the nearest cluster of some target image."""

    name = "image_based_filter"
    Config = ImageBasedFilterConfig
    reasons = StoredEmbeddingsStage.reasons + ("cluster_not_targeted",)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """Target images are embedded with the same scorer (cached in the same store), on the
        driver; the clusters they are nearest to are kept (`reject_untargeted`, a map)."""
        if not data.rows:
            return Fitted()
        _, targets = embed_paths(self.config.target, self.embeddings)
        if not len(targets):
            raise ValueError(f"image_based_filter: no decodable image in target {self.config.target}")
        centroids, sample_rows = self.fit_centroids(data, context, self.config.clusters)
        targeted = np.unique(nearest_centroid(targets, centroids))
        rejected = context.map(data, partial(reject_untargeted, centroids, targeted), "untargeted")
        return Fitted({"centroids": centroids, "targeted": targeted, "clusters": len(centroids),
                       "sample_rows": sample_rows}, rejected)


def reject_untargeted(centroids: np.ndarray, targeted: np.ndarray, table: pa.Table) -> pa.Table:
    """Rejections of the fit rows whose nearest centroid is not in `targeted`, with that cluster as the value."""
    clusters = nearest_centroid(column_vectors(table.column(VECTOR_COLUMN)), centroids)
    untargeted = np.flatnonzero(~np.isin(clusters, targeted))
    return rejections(table.column(ROW_COLUMN).take(pa.array(untargeted, pa.int64())), "cluster_not_targeted",
                      pc.cast(pa.array(clusters[untargeted], pa.int64()), pa.string()))
