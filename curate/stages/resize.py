"""Resize stage: resize and re-encode images with img2dataset's resizer and its resize modes.

The resizer decodes with OpenCV, which ignores the EXIF orientation and clips 16-bit images to
white in its 8-bit encoders: such an image is handed to it as an upright 8-bit PNG first.
"""

from __future__ import annotations

import io
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from curate.images import normalized_png
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

ResizeModeName = Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"]


class ResizeConfig(StageConfig):
    """Parameters of the resize stage; the names and meanings are img2dataset's."""

    image_size: int = Field(256, gt=0, description="target side in pixels")
    resize_mode: ResizeModeName = Field("border", description="img2dataset resize mode")
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=0, le=100, description="JPEG/WebP quality, or PNG compression 0-9")
    upscale_interpolation: str = "lanczos"
    downscale_interpolation: str = "area"

    @model_validator(mode="after")
    def _check(self):
        if self.encode_format == "png" and self.encode_quality > 9:
            raise ValueError("for png, encode_quality is the compression level and must be 0-9")
        return self


class Resize(MapStage):
    """Resize and re-encode images (img2dataset modes: no, keep_ratio, keep_ratio_largest, center_crop, border)."""

    name = "resize"
    Config = ResizeConfig
    reads = ("image",)
    writes = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(), "image_format": pa.string()}
    reasons = ("resize_failed",)

    def setup(self) -> None:
        from img2dataset.resizer import ResizeMode, Resizer

        cfg = self.config
        self._resizer = Resizer(
            image_size=cfg.image_size,
            resize_mode=ResizeMode[cfg.resize_mode],
            resize_only_if_bigger=cfg.resize_only_if_bigger,
            upscale_interpolation=cfg.upscale_interpolation,
            downscale_interpolation=cfg.downscale_interpolation,
            encode_quality=cfg.encode_quality,
            encode_format=cfg.encode_format,
        )
        self._format = {"jpg": "jpeg"}.get(cfg.encode_format, cfg.encode_format)

    def process(self, table: pa.Table) -> Verdict:
        images, widths, heights, formats = [], [], [], []
        failures: list[tuple[int, str]] = []
        for i, data in enumerate(table.column("image").to_pylist()):
            encoded, width, height, *_, error = self._resizer(io.BytesIO(_resizable(data)))
            if error is not None:
                failures.append((i, error))
                encoded, width, height = data, None, None
            images.append(encoded)
            widths.append(width)
            heights.append(height)
            formats.append(None if error else self._format)
        table = set_column(table, "image", images, pa.binary())
        table = set_column(table, "width", widths, pa.int32())
        table = set_column(table, "height", heights, pa.int32())
        verdict = Verdict(set_column(table, "image_format", formats, pa.string()))
        for i, error in failures:
            verdict.reject(i, "resize_failed", error[:200])
        return verdict


def _resizable(data: bytes | None) -> bytes:
    """The bytes to hand the resizer: an upright 8-bit PNG of a sideways or 16-bit image, else the
    image's own bytes (what the resizer cannot decode it reports itself)."""
    if not data:
        return b""
    try:
        return normalized_png(data) or data
    except (OSError, SyntaxError, ValueError):  # not an image Pillow reads: the resizer says what is wrong
        return data
