"""FAISS neighbour search: thresholded pairs against brute force, exact and approximate indexes, k-means."""

import numpy as np
import pytest

from curate.neighbours import SearchConfig, components, nearest_centroid, similar_pairs, spherical_kmeans


def planted(n=4000, dim=32, pairs=100, noise=0.15, seed=0):
    """Random unit vectors with `pairs` planted near-duplicates (row i and n - pairs + i)."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[n - pairs :] = vectors[:pairs] + noise * rng.normal(size=(pairs, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force_pairs(vectors, threshold):
    sims = vectors @ vectors.T
    left, right = np.nonzero(np.triu(sims >= threshold, k=1))
    return set(zip(left.tolist(), right.tolist()))


def test_flat_search_finds_exactly_the_pairs_above_the_threshold():
    vectors = planted()
    left, right = similar_pairs(vectors, 0.9, SearchConfig(index="flat"))
    expected = brute_force_pairs(vectors, 0.9)
    assert set(zip(left.tolist(), right.tolist())) == expected and len(expected) >= 100


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_recall_planted_pairs(index):
    vectors = planted()
    left, right = similar_pairs(vectors, 0.9, SearchConfig(index=index, nlist=64, nprobe=8))
    found = set(zip(left.tolist(), right.tolist()))
    expected = brute_force_pairs(vectors, 0.9)
    assert found <= expected  # approximate search may miss pairs, never invents them
    assert len(found) / len(expected) >= 0.95


def test_components_group_transitively():
    labels = components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels[0] == labels[1] == labels[2] != labels[3] and labels[4] == labels[5] != labels[0]


def test_spherical_kmeans_is_seeded_and_unit_norm():
    vectors = planted(n=2000, pairs=0)
    centroids, assignment = spherical_kmeans(vectors, 8, seed=3, niter=10)
    again, assignment_again = spherical_kmeans(vectors, 8, seed=3, niter=10)
    assert np.array_equal(centroids, again) and np.array_equal(assignment, assignment_again)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert np.array_equal(assignment, np.argmax(vectors @ centroids.T, axis=1))


def test_spherical_kmeans_does_not_depend_on_the_thread_count():
    """Repeated vectors (the same image under several uids) made FAISS's threaded k-means give
    other clusters on 2 threads than on 1 (2,106 of 3,000 rows here)."""
    import faiss

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 64)).astype(np.float32)
    vectors = np.repeat(base / np.linalg.norm(base, axis=1, keepdims=True), 75, axis=0)
    threads = faiss.omp_get_max_threads()
    answers = []
    try:
        for count in (1, 2):
            faiss.omp_set_num_threads(count)
            answers.append(spherical_kmeans(vectors, 50, 0, 20))
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(answers[0][1], answers[1][1]) and np.array_equal(answers[0][0], answers[1][0])


def test_nearest_centroid_is_the_largest_cosine_whatever_the_batch():
    vectors = planted(n=3000, pairs=0)
    centroids, _ = spherical_kmeans(vectors, 16, seed=1, niter=5)
    bulk = nearest_centroid(vectors, centroids)
    assert np.array_equal(bulk, np.argmax(vectors @ centroids.T, axis=1))
    one_by_one = np.concatenate([nearest_centroid(vectors[i : i + 1], centroids) for i in range(0, 3000, 7)])
    assert np.array_equal(one_by_one, bulk[::7])  # FAISS's few-query kernel, the same answers
    axes = np.eye(4, dtype=np.float32)
    tie = np.array([[0, 0.6, 0, 0.8], [0, 0.8, 0, 0.6], [0.5, 0.5, 0.5, 0.5]], np.float32)
    assert nearest_centroid(tie, axes[::-1]).tolist() == [0, 2, 0]  # exact ties: the smaller centroid index
    assert nearest_centroid(np.zeros((0, 4), np.float32), axes).shape == (0,)
