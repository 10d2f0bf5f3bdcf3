"""Decontamination stage: drop samples whose image is an evaluation image, exactly (same
bytes) or perceptually (pHash within a Hamming radius, FAISS binary index)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.io.readers import plan_inputs, read_task
from curate.stage import MapStage, StageConfig, Verdict, map_rows
from curate.stages.near_dedup import as_codes, hamming_index, phash


class DecontaminateConfig(StageConfig):
    """Parameters of the decontaminate stage."""

    eval_data: list[str] = Field(..., min_length=1,
                                 description="evaluation sets (Parquet/WebDataset/folders) to keep out")
    radius: int = Field(4, ge=0, le=31,
                        description="pHash Hamming distance at or below which an image is an eval image")


class Decontaminate(MapStage):
    """Reject images that are evaluation images: identical bytes, or pHash within the radius."""

    name = "decontaminate"
    Config = DecontaminateConfig
    reads = ("image",)
    reasons = ("eval_exact", "eval_near")

    def setup(self) -> None:
        uids, hashes = [], []
        self._exact: dict[bytes, str] = {}
        for task in plan_inputs(self.config.eval_data):
            for verdict in read_task(task, 1024):
                images = verdict.table["image"].to_pylist()
                # an undecodable eval image (no pHash) can still match exactly
                batch_hashes, _ = map_rows(images, phash)
                for uid, data, hashed in zip(verdict.table["uid"].to_pylist(), images, batch_hashes):
                    if data:
                        self._exact.setdefault(hashlib.sha256(data).digest(), uid)
                    if hashed is not None:
                        hashes.append(hashed)
                        uids.append(uid)
        self._eval_uids = uids
        self._index = hamming_index(as_codes(np.array(hashes, dtype=np.uint64)), self.config.radius) if hashes else None

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        images = table["image"].to_pylist()
        for i, data in enumerate(images):
            if data and (uid := self._exact.get(hashlib.sha256(data).digest())) is not None:
                verdict.reject(i, "eval_exact", uid)
        # the rest are searched at once; undecodable ones are decode's to reject, with their reason
        hashes, _ = map_rows(images, phash)
        rows = [i for i, h in enumerate(hashes) if h is not None and verdict.reasons[i] is None]
        if self._index is None or not rows:
            return verdict
        codes = as_codes(np.array([hashes[i] for i in rows], dtype=np.uint64))
        lims, distances, labels = self._index.range_search(codes, self.config.radius + 1)
        for k, i in enumerate(rows):
            if lims[k + 1] > lims[k]:
                nearest = labels[lims[k] + int(np.argmin(distances[lims[k]:lims[k + 1]]))]
                verdict.reject(i, "eval_near", self._eval_uids[nearest])
        return verdict
