"""Images as every stage should see them: upright (the EXIF orientation applied) and 8 bits a channel.

Pillow and OpenCV ignore the EXIF Orientation tag unless asked, so a photo stored sideways
with orientation 6 is hashed, resized and embedded sideways; and Pillow's `convert` clips
16-bit grey to 255 (a 16-bit PNG turns white), as OpenCV's 8-bit encoders do with 16-bit
colour. These helpers give one answer for every consumer.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

ORIENTATION = 0x0112  # the EXIF tag
_EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_WIDE_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # 16-bit grey (and Pillow's 32-bit integer mode for it)


def orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (1-8); 1 when it has none or an invalid one. A PNG's eXIf chunk
    may follow its pixels: it is seen once the image is loaded."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow's getexif would decode the whole PNG to look for a trailing chunk
    value = im.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(size: tuple[int, int], turn: int) -> tuple[int, int]:
    """(width, height) of an image of `size` stored with EXIF orientation `turn`, as it is shown:
    swapped for the orientations that turn it a quarter."""
    width, height = size
    return (height, width) if turn in (5, 6, 7, 8) else (width, height)


def upright(im: Image.Image) -> Image.Image:
    """The image with its EXIF orientation applied and the tag removed (the image itself at orientation 1)."""
    return ImageOps.exif_transpose(im) if orientation(im) != 1 else im


def is_wide(im: Image.Image) -> bool:
    """Whether an opened (not yet loaded) image holds more than 8 bits a channel, a 16-bit PNG or TIFF:
    Pillow reads 16-bit colour as 8-bit RGB(A) (its raw mode says 16), OpenCV as 16-bit, which its
    8-bit encoders clip."""
    if im.mode not in _EIGHT_BIT:
        return True
    args = im.tile[0].args if im.tile else ""
    rawmode = args if isinstance(args, str) else args[0] if args else ""
    return ";16" in str(rawmode)


def eight_bit(im: Image.Image) -> Image.Image:
    """The image in an 8-bit mode: 16-bit grey scaled to 0-255 (not clipped), anything else as it is
    (Pillow already reads 16-bit colour as 8-bit)."""
    if im.mode in _WIDE_GREY:
        values = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8), "L")
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image as upright 8-bit RGB (what a model's preprocessing takes)."""
    return eight_bit(upright(im)).convert("RGB")


def open_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes as upright 8-bit RGB, decoded whole."""
    with Image.open(io.BytesIO(data)) as im:
        return to_rgb(im)


def normalized_png(data: bytes) -> bytes | None:
    """The image as an upright 8-bit PNG (alpha kept) when the encoded bytes are sideways (EXIF
    orientation) or wider than 8 bits a channel, for code that decodes with OpenCV (img2dataset's
    resizer); None when they are fine as they are."""
    with Image.open(io.BytesIO(data)) as im:
        if orientation(im) == 1 and not is_wide(im):
            return None
        fixed = eight_bit(upright(im))
        out = io.BytesIO()
        fixed.save(out, format="PNG", compress_level=1)
        return out.getvalue()
