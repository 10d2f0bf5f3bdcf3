"""Calibration of copy detection: signatures of every method, their distances, and the threshold
that holds a target false-merge rate on planted copies (`curate calibrate near_dedup`).

Methods (near_dedup's and decontaminate's `method`): `phash` (one 64-bit pHash, Hamming bits),
`hashes` (the normalised multi-hash code of `curate.copyhash.copy_hashes`, the sum of
its Hamming distances), `descriptor` (a `curate train copydetect` checkpoint; distance
1 - cosine, thresholds reported as cosines) and `verified` (each image's VERIFY_CANDIDATES nearest
by the descriptor, or by `hashes` without a checkpoint, verified by curate.copyverify.inliers;
distance minus the inliers, thresholds reported as inlier counts).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curate import copies, copyhash

METHODS = ("phash", "hashes", "descriptor", "verified")
VERIFY_CANDIDATES = 8  # verified: each image's nearest this many candidates are verified
MAX_INLIERS = 64  # verified: the inlier counts swept run from 3 up to this
MIN_SIDE = 64  # originals copied are at least this big on their shorter side (a 50% resize leaves 32 px)
PAIR_CHUNK = 512  # rows of a distance matrix computed at once


def signatures(method: str, images: list[bytes], checkpoint: str | None = None) -> np.ndarray:
    """Each image's signature: uint64 code words (n x words) for the hash methods, unit float32
    descriptors (n x dim) for `descriptor`. Every image must decode."""
    if method == "phash":
        return np.array([[copyhash.phash(d)] for d in images], np.uint64).reshape(-1, 1)
    if method == "hashes":
        return np.array([copyhash.copy_hashes(d) for d in images], np.uint64).reshape(len(images), -1)
    if method == "descriptor":
        if checkpoint is None:
            raise ValueError("method descriptor needs a checkpoint (a `curate train copydetect` copydetect.pt)")
        from curate.models.copydetect import CopyDescriptor

        rows, vectors, failures = CopyDescriptor.shared(checkpoint).embed(images)
        if failures:
            raise ValueError(f"{len(failures)} image(s) could not be described, e.g. {next(iter(failures.values()))}")
        return vectors
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def distances(method: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between every signature of `a` and every one of `b` (len(a) x len(b)): Hamming
    bits (summed over code words) or 1 - cosine."""
    if method == "descriptor":
        return 1 - a @ b.T
    return copyhash.code_distance(a.view(np.int64)[:, None, :], b.view(np.int64)[None, :, :])


def close_pairs(method: str, sig: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, distance) of signatures at most `limit` apart, in row chunks."""
    found = []
    for start in range(0, len(sig), PAIR_CHUNK):
        d = distances(method, sig[start : start + PAIR_CHUNK], sig)
        i, j = np.nonzero(d <= limit)
        i += start
        keep = i < j
        found.append((i[keep], j[keep], d[i[keep] - start, j[keep]]))
    return tuple(np.concatenate(parts) for parts in zip(*found)) if found else (np.zeros(0, np.int64),) * 3


def nearest(method: str, queries: np.ndarray, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest reference signature (index, distance)."""
    labels, best = [], []
    for start in range(0, len(queries), PAIR_CHUNK):
        d = distances(method, queries[start : start + PAIR_CHUNK], refs)
        labels.append(d.argmin(axis=1))
        best.append(d[np.arange(len(d)), labels[-1]])
    return np.concatenate(labels), np.concatenate(best)


def thresholds(method: str, sig: np.ndarray) -> np.ndarray:
    """The thresholds (distances) swept: every radius up to a quarter of the code's bits, cosines
    0.50-0.99 by 0.005 and 0.99-0.9995 by 0.0005, or minus every inlier count from MAX_INLIERS to 3."""
    if method == "verified":
        return -np.arange(MAX_INLIERS, 2, -1)
    if method == "descriptor":
        cosines = np.r_[np.arange(0.9995, 0.99, -0.0005), np.arange(0.99, 0.4999, -0.005)]
        return np.round(1 - cosines, 6)
    return np.arange(0, 16 * sig.shape[1] + 1)


def as_threshold(method: str, distance: float) -> float:
    """A swept distance as the stage's threshold: a radius in bits, a cosine, or an inlier count."""
    if method == "verified":
        return -int(distance)
    return round(1 - float(distance), 6) if method == "descriptor" else int(distance)


def copy_set(images: list[bytes], originals: int, seed: int, eval_images: list[bytes] = (),
             eval_originals: int = 0, others: list[bytes] = ()) -> copies.CopySet:
    """Planted copies of up to `originals` of `images` among them, and of `eval_originals` of
    `eval_images`. Each set of the same image (`copies.same_image_pairs`) counts once, and only a set
    of pool images alone (or of eval images alone) is used: an image that is also in the other split
    or among `others` (what a descriptor trained on) is left out. Originals are at least MIN_SIDE px."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    everything = list(images) + list(eval_images) + list(others)
    n, m = len(images), len(eval_images)
    a, b = copies.same_image_pairs(copies.thumbnails(everything))
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(everything),) * 2),
                                    directed=False)
    split = np.r_[np.zeros(n, np.int64), np.ones(m, np.int64), np.full(len(others), 2)]
    mixed = np.zeros(label.max() + 1, bool)
    for s in range(3):  # a set is mixed when its members come from more than one split
        present = np.zeros_like(mixed)
        present[label[split == s]] = True
        mixed |= present & (np.bincount(label[split != s], minlength=len(mixed)) > 0)
    _, first = np.unique(label, return_index=True)
    first = np.sort(first[~mixed[label[first]]])
    pool, evals = first[first < n], first[(first >= n) & (first < n + m)] - n
    rng = np.random.default_rng(seed)

    def pick(chosen: np.ndarray, source, count: int) -> np.ndarray:
        big = [k for k, i in enumerate(chosen) if min(Image.open(io.BytesIO(source[i])).size) >= MIN_SIDE]
        return np.sort(rng.choice(big, min(count, len(big)), replace=False)) if big else np.zeros(0, np.int64)

    return copies.plant([images[i] for i in pool], pick(pool, images, originals), [eval_images[i] for i in evals],
                        pick(evals, eval_images, eval_originals), seed)


def nearest_k(method: str, queries: np.ndarray, refs: np.ndarray, k: int, same: bool) -> np.ndarray:
    """Each query's `k` nearest reference signatures (indices, n x k, nearest first); `same` when
    the queries are the references, each then leaving itself out."""
    out = []
    for start in range(0, len(queries), PAIR_CHUNK):
        d = distances(method, queries[start : start + PAIR_CHUNK], refs).astype(np.float64)
        if same:
            d[np.arange(len(d)), start + np.arange(len(d))] = np.inf
        out.append(np.argsort(d, axis=1, kind="stable")[:, :k])
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def verified_sweep(planted: copies.CopySet, checkpoint: str | None = None) -> dict[str, copies.Sweep]:
    """`sweep` of the verified method: candidates are each image's VERIFY_CANDIDATES nearest by the
    descriptor (by `hashes` without a checkpoint), each candidate pair scored by its inliers."""
    from curate.copyverify import inliers, keypoints

    base = "descriptor" if checkpoint else "hashes"
    sig, packed = signatures(base, planted.images, checkpoint), [keypoints(d) for d in planted.images]
    grid = thresholds("verified", sig)
    near = nearest_k(base, sig, sig, min(VERIFY_CANDIDATES, len(sig) - 1), same=True)
    pairs = np.unique(np.sort(np.stack([np.repeat(np.arange(len(sig)), near.shape[1]), near.ravel()], 1), 1), axis=0)
    scores = np.array([-inliers(packed[i], packed[j]) for i, j in pairs], np.float64)
    out = {"dedup": copies.dedup_sweep(planted, (pairs[:, 0], pairs[:, 1], scores), grid)}
    if planted.eval_images:
        eval_packed = [keypoints(d) for d in planted.eval_images]
        eval_sig = signatures(base, planted.eval_images, checkpoint)
        near = nearest_k(base, sig, eval_sig, min(VERIFY_CANDIDATES, len(eval_sig)), same=False)
        scores = np.array([[-inliers(packed[i], eval_packed[j]) for j in row] for i, row in enumerate(near)])
        best = np.argmin(scores, axis=1)
        out["decontaminate"] = copies.decontaminate_sweep(
            planted, (near[np.arange(len(near)), best], scores[np.arange(len(near)), best]), grid)
    return out


def sweep(method: str, planted: copies.CopySet, checkpoint: str | None = None) -> dict[str, copies.Sweep]:
    """Both views of one method on a CopySet: near_dedup's ("dedup") and, with an eval set,
    decontaminate's ("decontaminate")."""
    if method == "verified":
        return verified_sweep(planted, checkpoint)
    sig = signatures(method, planted.images, checkpoint)
    grid = thresholds(method, sig)
    out = {"dedup": copies.dedup_sweep(planted, close_pairs(method, sig, grid.max()), grid)}
    if planted.eval_images:
        eval_sig = signatures(method, planted.eval_images, checkpoint)
        out["decontaminate"] = copies.decontaminate_sweep(planted, nearest(method, sig, eval_sig), grid)
    return out


def summary(method: str, result: copies.Sweep, target: float) -> dict:
    """The threshold holding `target` with the best recall, and its figures (threshold None when none holds it)."""
    at = copies.at_false_merge(result, target)
    if at is None:
        lowest = int(np.argmin(result.false_merge))
        return {"method": method, "target": target, "threshold": None, "lowest_false_merge":
                float(result.false_merge[lowest]), "recall_there": float(result.recall[lowest])}
    return {"method": method, "target": target, "threshold": as_threshold(method, result.thresholds[at]),
            "recall": round(float(result.recall[at]), 4), "false_merge": round(float(result.false_merge[at]), 4),
            "recall_by_kind": {k: round(float(v[at]), 4) for k, v in result.recall_by_kind.items()}}


def calibrate(method: str, images: list[bytes], originals: int = 200, target: float = 0.005, seed: int = 0,
              checkpoint: str | None = None) -> dict:
    """Plant copies of `originals` of `images` among the distinct rest and choose near_dedup's threshold
    for `target` false merges: a summary (threshold, recall, false-merge rate, recall by kind) with
    the set's sizes."""
    planted = copy_set(images, originals, seed)
    result = summary(method, sweep(method, planted, checkpoint)["dedup"], target)
    distinct_images = int((planted.kind == "original").sum())
    return {**result, "distinct": distinct_images, "copies": len(planted.images) - distinct_images, "seed": seed}


def calibrate_descriptor(checkpoint: str, images: list[bytes], originals: int, target: float, seed: int) -> dict:
    """`calibrate` for a descriptor checkpoint (what `curate train copydetect` stores in its JSON)."""
    return calibrate("descriptor", images, originals, target, seed, checkpoint)


def write_threshold(checkpoint: str, result: dict) -> None:
    """Store a descriptor calibration's threshold (and figures) in the checkpoint's JSON."""
    from curate.io.writers import write_json_atomic
    from curate.models.copydetect import config_path, read_config

    meta = read_config(checkpoint)
    write_json_atomic({**meta, "threshold": result["threshold"], "calibration": result}, config_path(checkpoint))
