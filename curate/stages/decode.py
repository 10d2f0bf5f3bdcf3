"""Decode stage: open every image with Pillow, record its size and format, and turn sideways photos upright."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from curate.images import ORIENTATION, orientation, upright, upright_size
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict


class DecodeConfig(StageConfig):
    """Parameters of the decode stage."""

    max_pixels: int = Field(89_478_485, gt=0, description="width*height above this is a decompression bomb")
    full_decode: bool = Field(True, description="decode the whole image (finds truncated and corrupt files; a JPEG "
                              "at 1/8 scale, which reads every byte of it); false reads headers only")
    apply_orientation: bool = Field(
        True, description="re-encode an image whose EXIF orientation is not 1 upright, in its format (a JPEG with its "
        "own quantization tables) without the tag, so every consumer sees it the same way (Pillow, OpenCV and "
        "trainers ignore the tag); false keeps the bytes. width and height are the upright size either way")


class Decode(MapStage):
    """Decode images (Pillow); set width, height (upright), image_format; re-encode sideways (EXIF-oriented)
    images upright; reject missing, empty, corrupt, truncated and bomb images."""

    name = "decode"
    Config = DecodeConfig
    reads = ("image",)
    writes = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32(), "image_format": pa.string()}
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
        rotated: dict[int, bytes] = {}
        for i, data in enumerate(images):
            size, fmt, reason, value, upright_bytes = self._inspect(data)
            widths.append(size[0] if size else None)
            heights.append(size[1] if size else None)
            formats.append(fmt)
            reasons.append(reason)
            values.append(value)
            if upright_bytes is not None:
                rotated[i] = upright_bytes
        if rotated:
            rows = sorted(rotated)
            mask = np.zeros(table.num_rows, bool)
            mask[rows] = True
            fixed = pc.replace_with_mask(table.column("image").combine_chunks().cast(pa.binary()), pa.array(mask),
                                         pa.array([rotated[i] for i in rows], pa.binary()))
            table = set_column(table, "image", fixed)
            for i in rows:
                formats[i] = _ENCODERS.get(formats[i], ("png",))[0]
        table = set_column(table, "width", widths, pa.int32())
        table = set_column(table, "height", heights, pa.int32())
        table = set_column(table, "image_format", formats, pa.string())
        return Verdict(table, reasons, values)

    def _inspect(self, data: bytes | None):
        """(size, format, reason, value, upright bytes or None) for one encoded image."""
        if data is None:
            return None, None, "missing_image", None, None
        if len(data) == 0:
            return None, None, "empty_image", "0 bytes", None
        size = fmt = None
        cfg = self.config
        try:
            with Image.open(io.BytesIO(data)) as im:
                size, fmt = im.size, (im.format or "").lower() or None
                if size[0] * size[1] > cfg.max_pixels:
                    return size, fmt, "decompression_bomb", f"{size[0]}x{size[1]} > {cfg.max_pixels} px", None
                if cfg.full_decode:
                    if im.format == "JPEG" and not (cfg.apply_orientation and orientation(im) != 1):
                        # no pixels are kept (only a sideways image's are, re-encoded): libjpeg's 1/8 DCT
                        # scaling still entropy-decodes every byte, so it fails the same files with the
                        # same errors, at half the CPU of a full-size decode
                        im.draft(None, (1, 1))
                    im.load()
                turn = orientation(im)  # a PNG's eXIf chunk may follow its pixels: read after the load
                size = upright_size(size, turn)
                turned = _upright_bytes(im) if cfg.apply_orientation and turn != 1 else None
        except Image.DecompressionBombError as exc:
            return None, None, "decompression_bomb", str(exc)[:200], None
        except UnidentifiedImageError:
            return None, None, "corrupt_image", f"not an image ({len(data)} bytes, starts {data[:8].hex()})", None
        except (OSError, SyntaxError, ValueError) as exc:
            message = str(exc)
            reason = "truncated_image" if "truncated" in message or "broken data stream" in message else "corrupt_image"
            return size, fmt, reason, message[:200], None
        return size, fmt, None, None, turned


# how an upright copy is written, by Pillow format name: (image_format, Pillow format, options)
_ENCODERS = {"jpeg": ("jpeg", "JPEG", {}), "png": ("png", "PNG", {}), "webp": ("webp", "WEBP", {"quality": 95})}


def _upright_bytes(im: Image.Image) -> bytes:
    """`im` (loaded or not) turned upright and encoded in its own format (others as PNG), with its EXIF
    (the orientation tag removed) and colour profile; a JPEG keeps its quantization tables and
    chroma subsampling, so the copy loses as little as a re-encode can."""
    turned = upright(im)
    exif = turned.getexif()
    exif.pop(ORIENTATION, None)
    _, pillow_format, options = _ENCODERS.get((im.format or "").lower(), _ENCODERS["png"])
    options = {**options, "exif": exif.tobytes()}
    if im.info.get("icc_profile"):
        options["icc_profile"] = im.info["icc_profile"]
    if pillow_format == "JPEG":
        from PIL import JpegImagePlugin

        options["qtables"] = im.quantization
        sampling = JpegImagePlugin.get_sampling(im)
        if sampling != -1:
            options["subsampling"] = sampling
    out = io.BytesIO()
    (turned.convert("RGB") if pillow_format == "JPEG" and turned.mode not in ("L", "RGB", "CMYK") else turned).save(
        out, format=pillow_format, **options)
    return out.getvalue()
