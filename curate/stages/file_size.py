"""File size stage: bounds on the encoded image's size in bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.stage import MapStage, StageConfig, Verdict


class FileSizeConfig(StageConfig):
    """Parameters of the file_size stage (LAION-5B: min_bytes 5000)."""

    min_bytes: int = Field(0, ge=0, description="encoded image at least this many bytes")
    max_bytes: int | None = Field(None, gt=0, description="encoded image at most this many bytes")


class FileSize(MapStage):
    """Reject images whose encoded size in bytes is out of bounds."""

    name = "file_size"
    Config = FileSizeConfig
    reads = ("image",)
    reasons = ("file_too_small", "file_too_large")

    def cheap_process(self) -> bool:
        """Columnar rules over columns the rows have."""
        return True

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        sizes = pc.binary_length(table.column("image")).fill_null(0).to_numpy(zero_copy_only=False)
        small = sizes < self.config.min_bytes
        large = sizes > self.config.max_bytes if self.config.max_bytes is not None else np.zeros(len(sizes), bool)
        shown = _shown(sizes, small | large)
        verdict.reject_where(small, "file_too_small", shown)
        verdict.reject_where(large, "file_too_large", shown)
        return verdict


def _shown(sizes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ledger value ("4999 B") where `rows` is true, else None."""
    shown = np.full(len(sizes), None, dtype=object)
    picked = np.flatnonzero(rows)
    shown[picked] = [f"{size} B" for size in sizes[picked].tolist()]
    return shown
