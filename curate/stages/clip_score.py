"""CLIP score stage: image-caption cosine similarity from a CLIP scorer, filtered by an absolute
threshold, per-language thresholds (LAION) or a top fraction of the whole pool (DataComp)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate.embeddings import EmbeddingConfig, Embeddings
from curate.schema import set_column
from curate.stage import GlobalStage, Verdict


class ClipScoreConfig(EmbeddingConfig):
    """Parameters of the clip_score stage; set exactly one of threshold, thresholds, top_fraction."""

    threshold: float | None = Field(None, ge=-1, le=1, description="keep cosine >= this (DataComp B/32: 0.25)")
    thresholds: dict[str, float] | None = Field(
        None, description="per language (needs `language` first), with a `default`; LAION: {en: 0.28, default: 0.26}")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this top share of the pool (DataComp: 0.3)")

    @model_validator(mode="after")
    def _one_rule(self):
        rules = [r for r in ("threshold", "thresholds", "top_fraction") if getattr(self, r) is not None]
        if len(rules) != 1:
            raise ValueError(f"set exactly one of threshold, thresholds, top_fraction (got {rules or 'none'})")
        if self.thresholds is not None and "default" not in self.thresholds:
            raise ValueError("thresholds needs a 'default' entry for languages not listed")
        return self


class ClipScore(GlobalStage):
    """Score image-caption similarity with a CLIP; keep above a threshold, per-language thresholds or the pool's top fraction."""

    name = "clip_score"
    Config = ClipScoreConfig
    reads = ("uid", "image", "text")
    writes = {"clip_score": pa.float32()}
    reasons = ("unscorable_image", "low_clip_score")
    uses_model = True

    def setup(self) -> None:
        self._embeddings = Embeddings(self.config)

    def process(self, table: pa.Table) -> Verdict:
        embedded = self._embeddings.for_table(table)
        scores: list[float | None] = [None] * table.num_rows
        for row, score in zip(embedded.rows.tolist(), embedded.score.tolist()):
            scores[row] = score
        verdict = Verdict(set_column(table, "clip_score", scores, pa.float32()))
        for i, message in embedded.failures.items():
            verdict.reject(i, "unscorable_image", message)
        return verdict

    def partial(self, table: pa.Table) -> np.ndarray:
        if self.config.top_fraction is None:
            return np.zeros(0, np.float32)
        return table.column("clip_score").to_numpy().astype(np.float32)

    def merge(self, partials: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(partials) if partials else np.zeros(0, np.float32)

    def finalize(self, scores: np.ndarray) -> float | dict[str, float]:
        """The threshold(s) to apply: given, or the exact score of the k-th best sample,
        k = ceil(top_fraction * n); ties at that score are all kept."""
        if self.config.top_fraction is None:
            return self.config.thresholds if self.config.thresholds is not None else self.config.threshold
        if len(scores) == 0:
            return math.inf
        k = math.ceil(self.config.top_fraction * len(scores))
        return float(np.sort(scores)[::-1][k - 1])

    def apply(self, table: pa.Table, state: float | dict[str, float]) -> Verdict:
        verdict = Verdict(table)
        scores = table.column("clip_score").to_pylist()
        if isinstance(state, dict):
            if "lang" not in table.column_names:
                raise ValueError("clip_score with per-language thresholds needs the `language` stage before it")
            limits = [state.get(lang, state["default"]) for lang in table.column("lang").to_pylist()]
        else:
            limits = [state] * table.num_rows
        for i, (score, limit) in enumerate(zip(scores, limits)):
            if np.float32(score) < np.float32(limit):
                verdict.reject(i, "low_clip_score", f"{score:.4f} < {limit:.4f}")
        return verdict
