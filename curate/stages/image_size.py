"""Image size stage: shorter side, longer side and aspect ratio bounds."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from curate.stage import MapStage, StageConfig, Verdict


class ImageSizeConfig(StageConfig):
    """Parameters of the image_size stage (DataComp basic: min_side 200, max_aspect_ratio 3)."""

    min_side: int = Field(0, ge=0, description="shorter side at least this many pixels")
    max_side: int | None = Field(None, gt=0, description="longer side at most this many pixels")
    max_aspect_ratio: float | None = Field(None, ge=1.0, description="long/short side at most this")


class ImageSize(MapStage):
    """Reject images whose shorter side, longer side or aspect ratio is out of bounds (needs decode)."""

    name = "image_size"
    Config = ImageSizeConfig
    reads = ("width", "height")
    reasons = ("image_too_small", "image_too_large", "aspect_ratio")

    def process(self, table: pa.Table) -> Verdict:
        cfg = self.config
        verdict = Verdict(table)
        widths = table.column("width").to_pylist()
        heights = table.column("height").to_pylist()
        for i, (w, h) in enumerate(zip(widths, heights)):
            if w is None or h is None:
                raise ValueError(f"row uid={table.column('uid')[i]} has no width/height: run 'decode' before 'image_size'")
            short, long = min(w, h), max(w, h)
            if short < cfg.min_side:
                verdict.reject(i, "image_too_small", f"{w}x{h}")
            elif cfg.max_side is not None and long > cfg.max_side:
                verdict.reject(i, "image_too_large", f"{w}x{h}")
            elif cfg.max_aspect_ratio is not None and long > cfg.max_aspect_ratio * short:
                verdict.reject(i, "aspect_ratio", f"{long / max(short, 1):.2f}")
        return verdict
