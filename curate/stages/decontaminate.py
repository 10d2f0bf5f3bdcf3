"""Decontamination stage: drop samples whose image is an evaluation image, exactly (same
bytes) or perceptually (pHash within a Hamming radius, FAISS binary index)."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.io.readers import plan_inputs, read_task
from curate.stage import MapStage, StageConfig, Verdict
from curate.stages.near_dedup import as_codes, hamming_index, phash


class DecontaminateConfig(StageConfig):
    """Parameters of the decontaminate stage."""

    eval_data: list[str] = Field(..., min_length=1, description="evaluation sets (Parquet/WebDataset/folders) to keep out")
    radius: int = Field(4, ge=0, le=31, description="pHash Hamming distance at or below which an image is an eval image")


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
                for uid, data in zip(verdict.table["uid"].to_pylist(), verdict.table["image"].to_pylist()):
                    if data:
                        self._exact.setdefault(hashlib.sha256(data).digest(), uid)
                        try:
                            hashes.append(phash(data))
                            uids.append(uid)
                        except Exception:  # noqa: BLE001 - an undecodable eval image can still match exactly
                            pass
        self._eval_uids = uids
        self._index = hamming_index(as_codes(np.array(hashes, dtype=np.uint64)), self.config.radius) if hashes else None

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        for i, data in enumerate(table["image"].to_pylist()):
            if not data:
                continue
            if (uid := self._exact.get(hashlib.sha256(data).digest())) is not None:
                verdict.reject(i, "eval_exact", uid)
                continue
            if self._index is None:
                continue
            try:
                code = as_codes(np.array([phash(data)], dtype=np.uint64))
            except Exception:  # noqa: BLE001 - decode rejects undecodable images with their reason
                continue
            lims, distances, labels = self._index.range_search(code, self.config.radius + 1)
            if lims[1] > lims[0]:
                nearest = labels[lims[0] + int(np.argmin(distances[lims[0]:lims[1]]))]
                verdict.reject(i, "eval_near", self._eval_uids[nearest])
        return verdict
