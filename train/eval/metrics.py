"""Zero-shot classification and retrieval metrics over score matrices.

Ties are broken pessimistically everywhere: a query's rank is the number of incorrect
candidates that score at least as high as its (best) correct one, so a correct item tied
with others counts as ranked after all of them. A model that gives every candidate the same
score (e.g. collapsed embeddings) therefore gets 0 top-1, never a lucky hit. NaN scores
(a diverged model) count as -inf, so they are never a hit either.
"""

from __future__ import annotations

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def match_ranks(scores: Array, positives: Array) -> np.ndarray:
    """0-based rank of each row's best-scoring correct column: how many incorrect columns score >= it.

    `scores` is (N, C) with N >= 1; `positives` is a boolean (N, C) mask of the correct columns, at
    least one per row. Rank 0 means a correct column is strictly best (pessimistic ties).
    """
    scores, positives = _numpy(scores), _numpy(positives).astype(bool)
    if scores.ndim != 2 or positives.shape != scores.shape:
        raise ValueError(f"expected scores and positives of the same (N, C) shape, got {scores.shape} and "
                         f"{positives.shape}")
    if not scores.shape[0]:
        raise ValueError("no rows to score")
    if not positives.any(axis=1).all():
        raise ValueError(f"every row needs a correct column; row {int(np.argmin(positives.any(axis=1)))} has none")
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = np.where(positives, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~positives).sum(axis=1)


def correct_ranks(scores: Array, targets: Array) -> np.ndarray:
    """0-based rank of each row's correct column targets[i] in scores (N, C), as in `match_ranks`."""
    scores, targets = _numpy(scores), _numpy(targets).astype(np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (N, C) and targets (N,), got {scores.shape} and {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must lie in [0, {scores.shape[1]}), got [{targets.min()}, {targets.max()}]")
    return match_ranks(scores, targets[:, None] == np.arange(scores.shape[1])[None, :])


def zero_shot_top1(logits: Array, labels: Array) -> float:
    """Fraction of rows whose true class (labels[i]) scores strictly highest in logits[i] (N, C)."""
    ranks = correct_ranks(logits, labels)
    return float((ranks == 0).mean())


def mean_per_class_recall(logits: Array, labels: Array) -> float:
    """Mean over the classes present in `labels` of that class's top-1 recall (pessimistic ties).

    Every present class weighs the same, however many samples it has; classes with no samples
    only act as distractors.
    """
    hits = correct_ranks(logits, labels) == 0
    labels = _numpy(labels).astype(np.int64)
    return float(np.mean([hits[labels == c].mean() for c in np.unique(labels)]))


def retrieval_recalls(similarity: Array, ks: tuple[int, ...] = (1, 5, 10),
                      positives: Array | None = None) -> dict[str, float]:
    """Recall@k both ways: similarity[i, j] scores image i against text j.

    `positives[i, j]` marks text j as a correct match for image i (at least one per image and
    per text); by default the data are pairs, similarity is square and the correct match is
    the diagonal, (i, i). A query is a hit at k when one of its correct matches ranks within
    the top k. Returns `image_to_text_R@k` (each image queries the texts) and
    `text_to_image_R@k` (each text queries the images) for every k, as fractions in [0, 1].
    """
    similarity = _numpy(similarity)
    if positives is None:
        if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"expected a square (N, N) similarity matrix for paired data, got shape "
                             f"{similarity.shape}")
        positives = np.eye(similarity.shape[0], dtype=bool)
    positives = _numpy(positives).astype(bool)
    ranks = {"image_to_text": match_ranks(similarity, positives),
             "text_to_image": match_ranks(similarity.T, positives.T)}
    return {f"{way}_R@{k}": float((rank < k).mean()) for way, rank in ranks.items() for k in ks}
