"""Decontamination stage: drop samples whose image is an evaluation image, exactly (same bytes)
or as a copy: by pHash or the normalised multi-hash within a Hamming radius (a FAISS multi-hash
binary index, exact within the radius), by a learned copy descriptor at or above a cosine
(FAISS, exact), or by the descriptor's `candidates` nearest evaluation images verified by their
SIFT keypoints' RANSAC inliers (the eval images' keypoints held beside the index), the methods of
near_dedup (curate/stages/copy_method.py)."""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.copyhash import as_codes, copy_hashes, hamming_index, phash
from curate.copyverify import inliers, keypoints
from curate.io.readers.tasks import plan_inputs, read_task
from curate.neighbours import SearchConfig, build_index, search
from curate.stage import MapStage, Verdict, map_rows
from curate.stages.copy_method import CopyConfig, Descriptors

EVAL_BATCH = 1024


class DecontaminateConfig(CopyConfig):
    """Parameters of the decontaminate stage."""

    stage_name: ClassVar[str] = "decontaminate"

    eval_data: list[str] = Field(..., min_length=1,
                                 description="evaluation sets (Parquet/WebDataset/folders) to keep out")

    def reads_one_of(self) -> list[tuple[str, ...]]:
        """The image (and the caption, for a descriptor store's keys)."""
        return [self.descriptor_reads()] if self.uses_descriptor else [("uid", "image")]


class Decontaminate(MapStage):
    """Reject images that are evaluation images: identical bytes, or a copy (pHash or multi-hash within
    the radius, copy-descriptor cosine at or above the threshold, or a descriptor candidate whose
    keypoints verify)."""

    name = "decontaminate"
    Config = DecontaminateConfig
    reads = ("image",)
    reasons = ("eval_exact", "eval_near")

    @property
    def uses_model(self) -> bool:
        """A descriptor is a model: engines run the stage in long-lived workers."""
        return self.config.uses_descriptor

    def setup(self) -> None:
        self._exact: dict[bytes, str] = {}
        self._descriptors = Descriptors(self.config) if self.config.uses_descriptor else None
        uids, signatures, self._eval_keypoints = [], [], []
        for task in plan_inputs(self.config.eval_data):
            for batch in read_task(task, EVAL_BATCH):
                images = batch.table["image"].to_pylist()
                for uid, data in zip(batch.table["uid"].to_pylist(), images):
                    if data:  # an undecodable eval image (no signature) can still match exactly
                        self._exact.setdefault(hashlib.sha256(data).digest(), uid)
                rows, found = self._signatures(batch.table)
                uids += [batch.table["uid"][int(i)].as_py() for i in rows]
                self._eval_keypoints += self._keypoints(images, rows)
                signatures.append(found)
        self._eval_uids = uids
        self._index = None
        if uids:
            found = np.concatenate(signatures)
            self._index = (build_index(found, SearchConfig(index="flat")) if self._descriptors is not None
                           else hamming_index(as_codes(found), self.config.hash_radius))

    def _signatures(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(rows with a signature, their signatures): uint64 hashes or descriptors; undecodable images have none."""
        if self._descriptors is not None:
            rows, vectors, _ = self._descriptors.for_table(table)
            return rows, vectors
        hashes, failures = map_rows(table["image"].to_pylist(), phash if self.config.chosen == "phash" else copy_hashes)
        rows = np.array([i for i in range(len(hashes)) if i not in failures], np.int64)
        return rows, np.array([hashes[i] for i in rows], np.uint64).reshape(len(rows), -1)

    def _keypoints(self, images: list[bytes], rows: np.ndarray) -> list[bytes | None]:
        """verified: the packed keypoints of `images[rows]` (None where an image has none to give); else []."""
        if self.config.chosen != "verified":
            return []
        packed, _ = map_rows([images[int(i)] for i in rows], keypoints)
        return packed

    def _verify(self, verdict: Verdict, rest: np.ndarray, images: list[bytes], rows: np.ndarray,
                found: np.ndarray) -> Verdict:
        """verified: each row's `candidates` nearest eval images by descriptor, the one with the most
        inliers (at least the stage's `inliers`) named in the row's rejection."""
        queries, nearest, _ = search(self._index, found, self.config.candidates, -1.0)
        packed = self._keypoints(images, rest[rows])
        best: dict[int, tuple[int, int]] = {}
        for query, eval_row in zip(queries, nearest):
            mine, theirs = packed[query], self._eval_keypoints[eval_row]
            score = inliers(mine, theirs) if mine is not None and theirs is not None else 0
            if score >= self.config.verify_inliers and score > best.get(int(query), (0, -1))[0]:
                best[int(query)] = (score, int(eval_row))
        for query, (_, eval_row) in best.items():
            verdict.reject(int(rest[rows[query]]), "eval_near", self._eval_uids[eval_row])
        return verdict

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        images = table["image"].to_pylist()
        for i, data in enumerate(images):
            if data and (uid := self._exact.get(hashlib.sha256(data).digest())) is not None:
                verdict.reject(i, "eval_exact", uid)
        # the rest are searched at once; undecodable ones are decode's to reject, with their reason
        rest = np.flatnonzero(verdict.kept_mask())
        if self._index is None or not len(rest):
            return verdict
        rows, found = self._signatures(table.take(pa.array(rest)))
        if not len(rows):
            return verdict
        if self.config.chosen == "verified":
            return self._verify(verdict, rest, images, rows, found)
        if self._descriptors is not None:
            queries, nearest, _ = search(self._index, found, 1, self._descriptors.threshold)
            for query, eval_row in zip(queries, nearest):
                verdict.reject(int(rest[rows[query]]), "eval_near", self._eval_uids[eval_row])
            return verdict
        lims, distances, labels = self._index.range_search(as_codes(found), self.config.hash_radius + 1)
        for k, row in enumerate(rows):
            if lims[k + 1] > lims[k]:
                nearest = labels[lims[k] + int(np.argmin(distances[lims[k]:lims[k + 1]]))]
                verdict.reject(int(rest[row]), "eval_near", self._eval_uids[nearest])
        return verdict
