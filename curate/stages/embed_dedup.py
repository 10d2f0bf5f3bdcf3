"""Embedding dedup stage: near-duplicate images by CLIP image-embedding cosine, searched with FAISS."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from curate.embeddings import StoredEmbeddingConfig, StoredEmbeddingsStage
from curate.neighbours import SearchConfig, components, similar_pairs


class EmbedDedupConfig(StoredEmbeddingConfig, SearchConfig):
    """Parameters of the embed_dedup stage."""

    threshold: float = Field(0.95, ge=-1, le=1, description="image cosine at or above which two images are duplicates")


class EmbedDedup(StoredEmbeddingsStage):
    """Drop near-duplicate images: CLIP image cosine >= threshold (FAISS), grouped transitively; per group the highest clip_score, then the smallest uid, is kept."""

    name = "embed_dedup"
    Config = EmbedDedupConfig
    reasons = StoredEmbeddingsStage.reasons + ("near_duplicate_embedding",)

    def decide(self, uids: list[str], vectors: np.ndarray, scores: np.ndarray) -> dict[str, tuple[str, str]]:
        """Groups are the connected components of the pairs above the threshold (each vector
        looks at its `neighbours` nearest); a group keeps one sample by the documented rule."""
        left, right = similar_pairs(vectors, self.config.threshold, self.config)
        group = components(len(uids), left, right)
        position = np.arange(len(uids))  # uids are sorted: position order is uid order
        order = np.lexsort((position, -np.nan_to_num(scores, nan=-np.inf), group))
        _, first = np.unique(group[order], return_index=True)
        keeper = np.empty(group.max() + 1, np.int64)
        keeper[group[order][first]] = order[first]
        return {uids[i]: ("near_duplicate_embedding", uids[keeper[group[i]]])
                for i in range(len(uids)) if keeper[group[i]] != i}
