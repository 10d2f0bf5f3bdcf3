"""CLIP score stage: image-caption cosine similarity from a CLIP scorer (or a precomputed score
column, as DataComp's metadata ships), filtered by an absolute threshold, per-language
thresholds (LAION) or a top fraction of the whole pool (DataComp).

The top fraction's threshold is the exact k-th largest score, found in bounded memory: scores
map to order-preserving 32-bit keys, a first aggregate counts the keys' high 16 bits, a second
the low 16 bits inside the one high bucket that holds the k-th score (two 65,536-bin histograms,
whatever the pool's size)."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.schema import set_column
from curate.stage import Dataset, FitContext, Fitted, GlobalStage, Verdict, fixed_decimals
from curate.stages.embeddings import EmbeddingConfig, Embeddings
from curate.stages.input_columns import given_column, with_given_column

BINS = 1 << 16


class ClipScoreConfig(EmbeddingConfig):
    """Parameters of the clip_score stage: a scorer (checkpoint) or a score column; exactly one
    of threshold, thresholds, top_fraction."""

    checkpoint: str | None = Field(None, description="a CLIP checkpoint from `curate train clip`, or an open_clip "
                                                     "weights file (or set score_column)")
    score_column: str | None = Field(
        None, description="read the score from this input column instead of a model (DataComp's metadata: "
                          "clip_b32_similarity_score, clip_l14_similarity_score); no image is needed")
    threshold: float | None = Field(None, ge=-1, le=1, description="keep cosine >= this (DataComp B/32: 0.25)")
    thresholds: dict[str, float] | None = Field(
        None, description="per language (needs `language` first), with a `default`; LAION: {en: 0.28, default: 0.26}")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this top share of the pool (DataComp: 0.3)")
    fraction_rule: Literal["ceil", "datacomp"] = Field(
        "ceil", description="ceil: the threshold is the ceil(f n)-th best score; datacomp: DataComp's "
                            "-np.sort(-scores)[int(n f)], the (int(n f) + 1)-th best; both keep scores >= it "
                            "(ties too)")

    @model_validator(mode="after")
    def _one_rule(self):
        rules = [r for r in ("threshold", "thresholds", "top_fraction") if getattr(self, r) is not None]
        if len(rules) != 1:
            raise ValueError(f"set exactly one of threshold, thresholds, top_fraction (got {rules or 'none'})")
        if self.thresholds is not None and "default" not in self.thresholds:
            raise ValueError("thresholds needs a 'default' entry for languages not listed")
        from curate.stages.language import unknown_languages

        languages = [k for k in self.thresholds or () if k != "default"]
        if self.thresholds is not None and (problem := unknown_languages(languages)):
            raise ValueError(f"thresholds: {problem}")
        if (self.checkpoint is None) == (self.score_column is None):
            raise ValueError("set exactly one of checkpoint (score with a model) and score_column (read scores)")
        return self

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """A score column needs no image: the stage runs on metadata."""
        return [("uid", self.score_column)] if self.score_column else [("uid", "image", "text")]


def score_keys(scores: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 scores (a larger score has a larger key)."""
    bits = np.ascontiguousarray(scores, np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def key_score(key: int) -> float:
    """The float32 score of a key made by `score_keys`."""
    bits = np.uint32(key)
    bits = bits & np.uint32(0x7FFFFFFF) if bits & np.uint32(0x80000000) else ~bits
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def high_histogram(table: pa.Table) -> np.ndarray:
    """Counts of the scores' keys by their high 16 bits."""
    return np.bincount(score_keys(table.column("clip_score").to_numpy()) >> 16, minlength=BINS)


def low_histogram(high: int, table: pa.Table) -> np.ndarray:
    """Counts by the low 16 bits of the keys whose high 16 bits are `high`."""
    keys = score_keys(table.column("clip_score").to_numpy())
    return np.bincount(keys[(keys >> 16) == high] & np.uint32(0xFFFF), minlength=BINS)


def sum_histograms(parts: list[np.ndarray]) -> np.ndarray:
    """Histograms added up (an empty list is an empty histogram)."""
    return np.sum(parts, axis=0, dtype=np.int64) if parts else np.zeros(BINS, np.int64)


def kth_largest_bin(counts: np.ndarray, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value (1-based) and how many values lie in higher bins."""
    at_or_above = np.cumsum(counts[::-1])[::-1]  # values in each bin and the bins above it
    bin_ = int(np.flatnonzero(at_or_above >= k)[-1])
    return bin_, int(at_or_above[bin_] - counts[bin_])


class ClipScore(GlobalStage):
    """Score image-caption similarity with a CLIP (or read a score column); keep above a threshold,
    per-language thresholds or the pool's top fraction."""

    name = "clip_score"
    Config = ClipScoreConfig
    reads = ("uid", "image", "text")
    writes = {"clip_score": pa.float32()}
    reasons = ("unscorable_image", "low_clip_score")
    fit_columns = ("clip_score",)

    @property
    def uses_model(self) -> bool:
        """A CLIP is a model; reading a score column loads none."""
        return self.config.score_column is None

    def setup(self) -> None:
        self._embeddings = Embeddings(self.config) if self.config.checkpoint else None

    def cheap_process(self) -> bool:
        """Reading a score column is cheap; scoring with a model is not."""
        return self.config.score_column is not None

    def process(self, table: pa.Table) -> Verdict:
        if self.config.score_column:
            return self._read_scores(table)
        embedded = self._embeddings.for_table(table)
        scores = np.full(table.num_rows, np.nan, np.float32)
        scores[embedded.rows] = embedded.score
        valid = np.zeros(table.num_rows, bool)
        valid[embedded.rows] = True
        verdict = Verdict(set_column(table, "clip_score", pa.array(scores, pa.float32(), mask=~valid)))
        for i, message in embedded.failures.items():
            verdict.reject(i, "unscorable_image", message)
        return verdict

    def _read_scores(self, table: pa.Table) -> Verdict:
        """Scores from the input's column; a row without one (null or NaN) is unscorable."""
        column = self.config.score_column
        scores = pc.cast(given_column(table, self.name, "score_column", column), pa.float32())
        missing = pc.or_kleene(pc.is_null(scores), pc.is_nan(scores)).fill_null(True)
        return with_given_column(table, "clip_score", scores, missing, "unscorable_image", column)

    def fit(self, data: Dataset, context: FitContext) -> Fitted:
        """The threshold(s) to apply: given, or the exact score of the k-th best sample (`kth`:
        ceil(top_fraction * n), or DataComp's int(n * top_fraction) + 1); ties at it are all kept."""
        if self.config.top_fraction is None:
            if self.config.thresholds is not None:
                return Fitted({"thresholds": self.config.thresholds})
            return Fitted({"threshold": self.config.threshold})
        if not data.rows:
            return Fitted({"threshold": math.inf, "scored": 0})
        k = self.kth(data.rows)
        high, above = kth_largest_bin(context.aggregate(data, high_histogram, sum_histograms), k)
        low, _ = kth_largest_bin(context.aggregate(data, partial(low_histogram, high), sum_histograms), k - above)
        return Fitted({"threshold": key_score((high << 16) | low), "scored": data.rows, "kept_at_least": k})

    def kth(self, n: int) -> int:
        """Which best score (1-based) of `n` is the top fraction's threshold. DataComp's rule
        (baselines/apply_filter.py, `get_threshold`, lines 391-392: `n = int(len(df) * fraction);
        threshold = -np.sort(-df[key].values)[n]`) is the (int(n f) + 1)-th, here at most the n-th
        (at fraction 1 DataComp's index is out of range)."""
        if self.config.fraction_rule == "datacomp":
            return min(int(n * self.config.top_fraction) + 1, n)
        return math.ceil(self.config.top_fraction * n)

    def fit_stats(self, state: dict) -> dict:
        """The threshold a top fraction found."""
        if "kept_at_least" not in state:
            return {}
        return {"kind": "clip_score_fraction", "threshold": state["threshold"], "scored": state["scored"],
                "top_fraction": self.config.top_fraction, "kept_at_least": state["kept_at_least"]}

    def apply(self, table: pa.Table, state: dict, rejected: pa.Table | None = None) -> Verdict:
        verdict = Verdict(table)
        scores = pc.cast(table.column("clip_score"), pa.float32())
        if "thresholds" in state:
            if "lang" not in table.column_names:
                raise ValueError("clip_score with per-language thresholds needs the `language` stage before it")
            limits = np.full(table.num_rows, state["thresholds"]["default"], np.float32)
            langs = table.column("lang")
            for lang, limit in state["thresholds"].items():
                if lang != "default":
                    limits[pc.fill_null(pc.equal(langs, lang), False).to_numpy(zero_copy_only=False)] = limit
        else:
            limits = np.full(table.num_rows, state["threshold"], np.float32)
        values = scores.to_numpy(zero_copy_only=False)
        low = values < limits
        shown = np.where(low, values, 0)  # a null score (NaN here) is never low
        messages = pc.binary_join_element_wise(fixed_decimals(shown, 4), fixed_decimals(limits, 4), " < ")
        verdict.reject_where(low, "low_clip_score", messages)
        return verdict
