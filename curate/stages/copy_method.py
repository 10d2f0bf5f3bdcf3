"""How near_dedup and decontaminate compare images as copies: the method and its settings
(`CopyConfig`, with each method's calibrated default), a descriptor checkpoint's vectors from the
model or an embedding store (`Descriptors`), and the descriptor search inside one cluster.

Methods: `phash` (one 64-bit pHash within a Hamming radius), `hashes` (the 192-bit code of
curate.copyhash.copy_hashes within a summed radius), `descriptor` (a `curate train copydetect`
checkpoint, image cosine at or above a threshold), `verified` (each image's `candidates` nearest
by that descriptor, a pair accepted when `inliers` of its SIFT keypoints agree on one similarity
transform: curate.copyverify). `auto` is the descriptor when a checkpoint is given, else phash.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from curate.copyverify import inliers as verified_inliers
from curate.io.embedding_store import EmbeddingStore, sample_keys
from curate.models.embedder import file_fingerprint
from curate.neighbours import SearchConfig, components, similar_pairs
from curate.stage import ROW_COLUMN, StageConfig, rejections
from curate.stages.clustered import VECTOR_COLUMN, cluster_runs, column_vectors

# Each stage's default radius of each hash method (bits of 64, of 192 summed), calibrated by
# bench/copies.py: the radius with the best recall at <= 0.5% false merges on planted copies of
# held-out pool drawings (hashes: near_dedup's components merge more than decontaminate's nearest
# eval image matches, so its radius is smaller). No pHash radius holds 0.5% there (radius 0
# merges 1.35% of distinct drawings): pHash keeps radius 4, its default before the calibration.
RADIUS = {"near_dedup": {"phash": 4, "hashes": 1}, "decontaminate": {"phash": 4, "hashes": 7}}
# Each stage's default inlier count of the verified method, calibrated by bench/copies.py as the
# radii are: the count with the best recall at <= 0.5% false merges (near_dedup 41: 0.41%,
# decontaminate 18: 0.47%)
INLIERS = {"near_dedup": 41, "decontaminate": 18}
KEYPOINTS_COLUMN = "copy_keypoints"  # verified: each image's packed SIFT keypoints (curate.copyverify.keypoints)
_DEFAULT_RADII = "; ".join(f"{stage}: " + ", ".join(f"{m} {r}" for m, r in radii.items())
                           for stage, radii in RADIUS.items())


def verified_pairs(packed: list[bytes], left: np.ndarray, right: np.ndarray, inliers: int) -> np.ndarray:
    """Which candidate pairs (left[e], right[e]) of packed keypoints have at least `inliers` inliers."""
    return np.array([verified_inliers(packed[i], packed[j]) >= inliers for i, j in zip(left, right)], bool)


def descriptor_duplicates(threshold: float, search: SearchConfig, inliers: int | None, table: pa.Table) -> pa.Table:
    """Descriptor fit rows grouped by cluster -> in each whole cluster, the connected components of
    the pairs at or above the cosine `threshold` (each vector looks at its `neighbours` nearest),
    with `inliers` only those of them whose keypoints verify (`verified_pairs`); each component
    keeps its smallest uid and the others name it."""
    table, runs = cluster_runs(table)
    vectors = column_vectors(table.column(VECTOR_COLUMN))
    dropped, keepers = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, end in runs:
        if end - start < 2:
            continue
        left, right = similar_pairs(vectors[start:end], threshold, search)
        if inliers is not None:
            packed = table.column(KEYPOINTS_COLUMN).slice(start, end - start).to_pylist()
            keep = verified_pairs(packed, left, right, inliers)
            left, right = left[keep], right[keep]
        group = components(end - start, left, right)
        first = np.full(group.max() + 1, end - start, np.int64)
        np.minimum.at(first, group, np.arange(end - start))  # rows are in uid order: the first is the smallest uid
        lost = np.flatnonzero(first[group] != np.arange(end - start))
        dropped.append(start + lost)
        keepers.append(start + first[group[lost]])
    dropped, keepers = np.concatenate(dropped), np.concatenate(keepers)
    return rejections(table.column(ROW_COLUMN).take(pa.array(dropped)), "near_duplicate",
                      table.column("uid").take(pa.array(keepers)))


class CopyConfig(StageConfig):
    """How images are compared as copies: the method and its radius or descriptor (near_dedup, decontaminate)."""

    method: Literal["auto", "phash", "hashes", "descriptor", "verified"] = Field(
        "auto", description="phash: one 64-bit pHash; hashes: pHash, dHash and wavelet hash of the normalised "
                            "image (192 bits); descriptor: a `curate train copydetect` checkpoint; verified: that "
                            "descriptor's nearest candidates, verified by their SIFT keypoints' RANSAC inliers; "
                            "auto: descriptor when a checkpoint is given, else phash")
    radius: int | None = Field(None, ge=0, le=95, description="hash methods: Hamming distance (summed over the "
                                                              "hashes) at or below which images are copies; default "
                                                              f"the stage's calibrated one ({_DEFAULT_RADII})")
    checkpoint: str | None = Field(None, description="descriptor: copydetect.pt from `curate train copydetect` "
                                                     "(its .json beside it)")
    threshold: float | None = Field(None, ge=-1, le=1, description="descriptor: image cosine at or above which "
                                                                   "images are copies (default: the checkpoint's "
                                                                   "calibrated threshold)")
    inliers: int | None = Field(None, ge=3, description="verified: RANSAC inliers at or above which a candidate pair "
                                                        "is a copy (default the stage's calibrated one: "
                                                        + ", ".join(f"{k} {v}" for k, v in INLIERS.items()) + ")")
    candidates: int = Field(8, ge=1, le=1024, description="verified: each image's nearest this many by the "
                                                          "descriptor are verified")
    store: str | None = Field(None, description="descriptor: an embedding store folder that keeps the descriptors "
                                                "(computed once, reused by later stages and runs)")

    @property
    def chosen(self) -> str:
        """The method used: `method`, with auto resolved."""
        return self.method if self.method != "auto" else "descriptor" if self.checkpoint else "phash"

    stage_name: ClassVar[str]  # the stage whose calibrated radii (RADIUS) are the defaults

    @property
    def uses_descriptor(self) -> bool:
        """Whether the method runs the descriptor checkpoint (descriptor and verified)."""
        return self.chosen in ("descriptor", "verified")

    @property
    def verify_inliers(self) -> int | None:
        """verified: the inliers a pair needs, given or the stage's calibrated default; None for the other methods."""
        if self.chosen != "verified":
            return None
        return self.inliers if self.inliers is not None else INLIERS[self.stage_name]

    @property
    def hash_radius(self) -> int:
        """The hash methods' radius: given, or the stage's calibrated default for the method."""
        return self.radius if self.radius is not None else RADIUS[self.stage_name][self.chosen]

    @model_validator(mode="after")
    def _settings_of_the_method(self):
        chosen = self.chosen
        if self.inliers is not None and chosen != "verified":
            raise ValueError(f"inliers are for method verified, not {chosen}")
        if chosen == "verified" and self.threshold is not None:
            raise ValueError("method verified takes inliers, not threshold: every candidate pair is verified")
        if self.uses_descriptor:
            if not self.checkpoint:
                raise ValueError(f"method {chosen} needs checkpoint: a copydetect.pt from `curate train copydetect`")
            if self.radius is not None:
                raise ValueError(f"radius is for the hash methods; method {chosen} takes "
                                 + ("threshold (a cosine)" if chosen == "descriptor" else "inliers"))
        else:
            wrong = [k for k in ("checkpoint", "threshold", "store") if getattr(self, k) is not None]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} are for method descriptor, not {chosen}")
            if chosen == "phash" and self.radius is not None and self.radius > 31:
                raise ValueError(f"radius {self.radius} is over phash's 31 (of 64 bits)")
        return self

    def descriptor_reads(self) -> tuple[str, ...]:
        """The columns the descriptor needs: the image, and the caption too when a store keys it."""
        return ("uid", "image", "text") if self.store else ("uid", "image")


class Descriptors:
    """A stage's copy descriptors: from the store when it has them, else computed (and stored)."""

    def __init__(self, config: CopyConfig):
        from curate.models.copydetect import CopyDescriptor

        self.model = CopyDescriptor.shared(config.checkpoint)
        self.store = EmbeddingStore(config.store, file_fingerprint(config.checkpoint, "copydetect")) \
            if config.store else None
        self.threshold = config.threshold if config.threshold is not None else self.model.threshold
        if config.chosen == "verified":
            self.threshold = -1.0  # every candidate is verified, whatever its cosine
        if self.threshold is None:
            raise ValueError(f"copy descriptor {config.checkpoint} has no calibrated threshold (trained without "
                             "calibration): set threshold, or run `curate calibrate near_dedup`")

    def for_table(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows described, their unit descriptors as float16 values in float32, failures by row)."""
        images = table.column("image").to_pylist()
        if self.store is None:
            rows, vectors, failures = self.model.embed(images)
            return rows, vectors.astype(np.float16).astype(np.float32), failures
        keys = sample_keys(table)
        todo = np.flatnonzero(~self.store.find(keys))
        rows, vectors, failures = self.model.embed([images[i] for i in todo])
        failures = {int(todo[i]): message for i, message in failures.items()}
        fresh = todo[rows]
        self.store.put([keys[i] for i in fresh], vectors, np.zeros_like(vectors), np.full(len(fresh), np.nan))
        rows = np.array([i for i in range(len(keys)) if i not in failures], np.int64)
        return rows, self.store.images([keys[i] for i in rows]), failures

