"""File size stage: bounds on the encoded image's size in bytes."""

from __future__ import annotations

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

    def process(self, table: pa.Table) -> Verdict:
        verdict = Verdict(table)
        sizes = pc.fill_null(pc.binary_length(table.column("image")), 0).to_pylist()
        for i, size in enumerate(sizes):
            if size < self.config.min_bytes:
                verdict.reject(i, "file_too_small", f"{size} B")
            elif self.config.max_bytes is not None and size > self.config.max_bytes:
                verdict.reject(i, "file_too_large", f"{size} B")
        return verdict
