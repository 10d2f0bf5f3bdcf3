"""DataComp's image-based filter: cluster the pool's CLIP image embeddings, keep the clusters
that are nearest to some image of a target set (DataComp: ImageNet's training images).

Distributed: the centroids are given (DataComp releases its pools' 100k) or k-means is fitted on
a bounded uniform sample of the pool (`fit_sample`); the target set is assigned to them on the
driver, a chunk at a time; a map then rejects each row whose nearest centroid is no target's, so
no shuffle is needed.

DataComp's rule (baselines/apply_filter.py): `get_centroid_ids_gpu` (lines 81-108) assigns a
vector to the centroid of the largest dot product (`torch.argmax` of `features @ centroids.T`:
the first on a tie); `load_uids_with_image_filter` (535-554) takes the unique nearest centroids
of the ImageNet-1k vectors as targets, and `image_filter_helper` (183-190) keeps a sample whose
nearest centroid is a target. Its centroids come from baselines/image_based_clustering.py
(`train_kmeans`, lines 27-70): faiss.Clustering, L2, niter 20, no subsampling (`kmeans: l2`)."""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.neighbours import KMeansConfig, nearest_centroid
from curate.stage import ROW_COLUMN, Dataset, FitContext, Fitted, rejections
from curate.stages.clustered import VECTOR_COLUMN, StoredEmbeddingsStage, column_vectors
from curate.stages.embeddings import StoredEmbeddingConfig, embed_paths

TARGET_CHUNK = 65_536  # target vectors assigned to centroids at once (DataComp's ImageNet-1k set: 1.28M of them)


class ImageBasedFilterConfig(StoredEmbeddingConfig, KMeansConfig):
    """Parameters of the image_based_filter stage: exactly one of target and target_vectors."""

    target: list[str] | None = Field(None, min_length=1, description="target image sets (Parquet/WebDataset/folders), "
                                                                     "e.g. an eval suite's training split, embedded "
                                                                     "with the scorer (or found in the store)")
    target_vectors: list[str] | None = Field(
        None, min_length=1, description="target image vectors as .npy files (n x dim, the store's embedding), e.g. "
                                        "DataComp's ImageNet-1k train L/14 features")
    clusters: int = Field(100, gt=0, description="k-means clusters over the pool (DataComp: 100,000 at 12.8M)")
    centroids: str | None = Field(None, description="a .npy of given centroids (k x dim), e.g. DataComp's released "
                                                    "ones: no k-means is fitted, `clusters` is ignored")
    kmeans: Literal["spherical", "l2"] = Field(
        "spherical", description="spherical k-means (unit centroids), or L2 k-means as DataComp's "
                                 "image_based_clustering.py (faiss.Clustering, niter 20)")

    @model_validator(mode="after")
    def _one_target(self):
        if (self.target is None) == (self.target_vectors is None):
            raise ValueError("set exactly one of target (image sets) and target_vectors (.npy files)")
        return self


class ImageBasedFilter(StoredEmbeddingsStage):
    """DataComp image-based filter: k-means on pool image embeddings (or given centroids); keep the
    samples in clusters that are the nearest cluster of some target image."""

    name = "image_based_filter"
    Config = ImageBasedFilterConfig
    reasons = StoredEmbeddingsStage.reasons + ("cluster_not_targeted",)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """The centroids (given, or fitted on the driver on a bounded sample), the clusters the
        target vectors are nearest to, and a map rejecting the rows of the other clusters
        (`reject_untargeted`)."""
        if not data.rows:
            return Fitted()
        config = self.config
        if config.centroids is not None:
            centroids, sample_rows = load_vectors(config.centroids, self.embeddings.store.dim), 0
        else:
            centroids, sample_rows = self.fit_centroids(data, context, config.clusters, config.kmeans == "spherical")
        targeted = self.targeted(centroids)
        rejected = context.map(data, partial(reject_untargeted, centroids, targeted), "untargeted")
        return Fitted({"centroids": centroids, "targeted": targeted, "clusters": len(centroids),
                       "sample_rows": sample_rows}, rejected)

    def targeted(self, centroids: np.ndarray) -> np.ndarray:
        """The sorted distinct nearest centroids of the target vectors."""
        if self.config.target is not None:
            _, vectors = embed_paths(self.config.target, self.embeddings)
            chunks = [vectors] if len(vectors) else []
        else:
            chunks = (chunk for path in self.config.target_vectors
                      for chunk in vector_chunks(path, centroids.shape[1]))
        found = [np.unique(nearest_centroid(chunk, centroids)) for chunk in chunks]
        if not found:
            given = self.config.target or self.config.target_vectors
            raise ValueError(f"image_based_filter: no target vector in {given} (no decodable image, or empty files)")
        return np.unique(np.concatenate(found))


def load_vectors(path: str, dim: int | None) -> np.ndarray:
    """A .npy of vectors (n x dim) as float32, checked against the store's dimension."""
    vectors = np.load(path)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"{path}: expected an array of vectors (n x {dim or 'dim'}), got shape {vectors.shape}")
    return np.ascontiguousarray(vectors, np.float32)


def vector_chunks(path: str, dim: int):
    """A .npy of vectors (n x dim) read through a memory map, TARGET_CHUNK rows at a time (float32)."""
    vectors = np.load(path, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{path}: expected target vectors of the centroids' size (n x {dim}), "
                         f"got shape {vectors.shape}")
    for start in range(0, len(vectors), TARGET_CHUNK):
        yield np.ascontiguousarray(vectors[start : start + TARGET_CHUNK], np.float32)


def reject_untargeted(centroids: np.ndarray, targeted: np.ndarray, table: pa.Table) -> pa.Table:
    """Rejections of the fit rows whose nearest centroid is not in `targeted`, with that cluster as the value."""
    clusters = nearest_centroid(column_vectors(table.column(VECTOR_COLUMN)), centroids)
    untargeted = np.flatnonzero(~np.isin(clusters, targeted))
    return rejections(table.column(ROW_COLUMN).take(pa.array(untargeted, pa.int64())), "cluster_not_targeted",
                      pc.cast(pa.array(clusters[untargeted], pa.int64()), pa.string()))
