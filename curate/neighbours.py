"""FAISS over unit-norm embeddings (cosine = inner product): the index choice, a thresholded
k-nearest-neighbour search, grouping into connected components, spherical k-means and the
nearest centroid of a row, shared by embedding dedup, SemDeDup, the image-based filter and
decontamination.

FAISS runs on the GPU when `faiss.get_num_gpus() > 0` (the faiss-gpu package), else on the
CPU; the code is the same. Results are a function of the vectors and their order: callers
sort by uid first, so every engine and worker count gets the same answer.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from curate.stage import StageConfig

FLAT_MAX_ROWS = 100_000  # `index: auto` searches exactly (flat) up to this many vectors, IVF above
QUERY_CHUNK = 16_384  # queries per FAISS call, which bounds the result arrays' memory
SAMPLE_PER_CLUSTER, SAMPLE_MIN, SAMPLE_MAX = 256, 100_000, 1_000_000  # default k-means sample size bounds
TIE_CANDIDATES, TIE_TOLERANCE = 4, 1e-5  # near ties of centroid cosines settled in float64 among this many


class SearchConfig(StageConfig):
    """How neighbours are searched: the FAISS index and its accuracy knobs."""

    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description=f"exact `flat` search, or approximate `ivf`/`hnsw`; auto: flat up to {FLAT_MAX_ROWS:,} "
                            "vectors, ivf above (hnsw builds its graph in parallel, so its result may vary run to "
                            "run; ivf's coarse k-means is threaded, so which pairs it misses may vary with the CPU "
                            "count)")
    neighbours: int = Field(16, ge=1, le=1024, description="nearest neighbours looked at per vector")
    nlist: int | None = Field(None, gt=0, description="IVF lists (default: 4 * sqrt(n))")
    nprobe: int = Field(32, gt=0, description="IVF lists visited per query")
    ef_search: int = Field(128, gt=0, description="HNSW candidate list size per query")


class KMeansConfig(StageConfig):
    """How a stage's spherical k-means is fitted: on a bounded uniform sample of the pool."""

    niter: int = Field(20, gt=0, description="k-means iterations")
    seed: int = Field(0, description="k-means seed")
    fit_sample: int | None = Field(
        None, gt=0, description=f"rows k-means is fitted on: those with the smallest hashes of their uid (a uniform "
                                f"sample that does not depend on partitioning); default {SAMPLE_PER_CLUSTER} per "
                                f"cluster, at least {SAMPLE_MIN:,} and at most {SAMPLE_MAX:,}")

    def sample_rows(self, clusters: int) -> int:
        """The sample size for `clusters` clusters: `fit_sample`, or the default bounds."""
        return self.fit_sample or min(max(SAMPLE_PER_CLUSTER * clusters, SAMPLE_MIN), SAMPLE_MAX)


def _gpu():
    import faiss

    return faiss.get_num_gpus() > 0


def build_index(vectors: np.ndarray, config: SearchConfig):
    """An inner-product index over `vectors` (float32, rows unit-norm), chosen by `config.index`."""
    import faiss

    n, dim = vectors.shape
    kind = config.index if config.index != "auto" else ("flat" if n <= FLAT_MAX_ROWS else "ivf")
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.ef_search
        index.add(vectors)
        return index  # FAISS has no GPU HNSW
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = max(1, min(config.nlist or int(4 * math.sqrt(n)), n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234
        index.cp.max_points_per_centroid = 64  # a sample and few iterations: IVF needs coarse lists, not fine centroids
        index.cp.niter = 10
        index.train(vectors)
        index.nprobe = min(config.nprobe, nlist)
    if _gpu():
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, index row, cosine) of each of the k nearest neighbours with cosine >= threshold."""
    found_q, found_i, found_s = [], [], []
    k = min(k, index.ntotal)
    for start in range(0, len(queries), QUERY_CHUNK):
        scores, labels = index.search(queries[start : start + QUERY_CHUNK], k)
        rows, cols = np.nonzero((scores >= threshold) & (labels >= 0))
        found_q.append(rows + start)
        found_i.append(labels[rows, cols])
        found_s.append(scores[rows, cols])
    if not found_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_q), np.concatenate(found_i).astype(np.int64), np.concatenate(found_s)


def similar_pairs(vectors: np.ndarray, threshold: float, config: SearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of rows with cosine >= threshold, each row looking at its k nearest."""
    rows, neighbours, _ = search(build_index(vectors, config), vectors, config.neighbours + 1, threshold)
    keep = rows != neighbours
    pairs = np.unique(np.sort(np.stack([rows[keep], neighbours[keep]], axis=1), axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n rows, given edges (left[e], right[e])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int, niter: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (FAISS, seeded): unit-norm centroids and each row's nearest one (see `kmeans`)."""
    return kmeans(vectors, k, seed, niter, spherical=True)


def kmeans(vectors: np.ndarray, k: int, seed: int, niter: int, spherical: bool) -> tuple[np.ndarray, np.ndarray]:
    """k-means (FAISS, seeded, every row used: no subsampling): centroids and each row's nearest
    one. Spherical (centroids renormalised, inner product) or plain L2, as DataComp's
    image_based_clustering.py fits its centroids (faiss.Clustering over an IndexFlatL2).

    On the CPU it runs on one thread: FAISS's threaded k-means depends on the thread count
    (BLAS tiles round differently and k-means amplifies it: 509 of 3,000 pool embeddings
    changed cluster between 1 and 2 threads), and clusters must depend on the data only."""
    import faiss

    k = min(k, len(vectors))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        model = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=spherical, gpu=_gpu(),
                             max_points_per_centroid=max(256, math.ceil(len(vectors) / k)))
        model.train(vectors)
        _, assignment = model.index.search(vectors, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return model.centroids, assignment[:, 0].astype(np.int64)


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid (largest cosine; the smaller index on a tie), by FAISS over a
    flat index of the centroids. FAISS rounds a batch of queries differently from a few (BLAS
    for many, SIMD loops for few), so rows whose best two cosines lie within TIE_TOLERANCE are
    settled in float64 among the TIE_CANDIDATES best: a row's cluster does not depend on the
    rows it is searched with."""
    if not len(vectors):
        return np.zeros(0, np.int64)
    k = min(TIE_CANDIDATES, len(centroids))
    index = build_index(np.ascontiguousarray(centroids, np.float32), SearchConfig(index="flat"))
    scores, labels = index.search(np.ascontiguousarray(vectors, np.float32), k)
    nearest = labels[:, 0].astype(np.int64)
    close = np.flatnonzero(scores[:, 0] - scores[:, 1] <= TIE_TOLERANCE) if k > 1 else np.zeros(0, np.int64)
    if len(close):
        candidates = labels[close]
        exact = (vectors[close, None, :].astype(np.float64) * centroids[candidates].astype(np.float64)).sum(axis=-1)
        best = np.lexsort((candidates, -exact), axis=-1)[:, 0]
        nearest[close] = candidates[np.arange(len(close)), best]
    return nearest
