"""Decode stage: open every image with Pillow and record its size and format."""

from __future__ import annotations

import io
import warnings

import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict


class DecodeConfig(StageConfig):
    """Parameters of the decode stage."""

    max_pixels: int = Field(89_478_485, gt=0, description="width*height above this is a decompression bomb")
    full_decode: bool = Field(True, description="decode all pixels (finds truncated files); false reads headers only")


class Decode(MapStage):
    """Decode images (Pillow); set width, height, image_format; reject missing, empty, corrupt, truncated and bomb images."""

    name = "decode"
    Config = DecodeConfig
    reads = ("image",)
    writes = {"width": pa.int32(), "height": pa.int32(), "image_format": pa.string()}
    reasons = ("missing_image", "empty_image", "corrupt_image", "truncated_image", "decompression_bomb")

    def setup(self) -> None:
        # bombs are this stage's to report (with the configured limit), not Pillow's to warn about
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if Image.MAX_IMAGE_PIXELS is not None:  # Pillow refuses above 2x its limit, before our check
            Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, self.config.max_pixels)

    def process(self, table: pa.Table) -> Verdict:
        images = table.column("image").to_pylist()
        widths: list[int | None] = []
        heights: list[int | None] = []
        formats: list[str | None] = []
        reasons: list[str | None] = []
        values: list[str | None] = []
        for data in images:
            size, fmt, reason, value = self._inspect(data)
            widths.append(size[0] if size else None)
            heights.append(size[1] if size else None)
            formats.append(fmt)
            reasons.append(reason)
            values.append(value)
        table = set_column(table, "width", widths, pa.int32())
        table = set_column(table, "height", heights, pa.int32())
        table = set_column(table, "image_format", formats, pa.string())
        return Verdict(table, reasons, values)

    def _inspect(self, data: bytes | None):
        """(size, format, reason, value) for one encoded image."""
        if data is None:
            return None, None, "missing_image", None
        if len(data) == 0:
            return None, None, "empty_image", "0 bytes"
        size = fmt = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                size, fmt = im.size, (im.format or "").lower() or None
                if size[0] * size[1] > self.config.max_pixels:
                    return size, fmt, "decompression_bomb", f"{size[0]}x{size[1]} > {self.config.max_pixels} px"
                if self.config.full_decode:
                    im.load()
        except Image.DecompressionBombError as exc:
            return None, None, "decompression_bomb", str(exc)[:200]
        except UnidentifiedImageError:
            return None, None, "corrupt_image", f"not an image ({len(data)} bytes, starts {data[:8].hex()})"
        except (OSError, SyntaxError, ValueError) as exc:
            message = str(exc)
            reason = "truncated_image" if "truncated" in message or "broken data stream" in message else "corrupt_image"
            return size, fmt, reason, message[:200]
        return size, fmt, None, None
