"""Near copies of an image, as web data repeats them: what an image dedup should catch.
Tests plant them in a pool; `bench/dedup.py --calibrate` measures a scorer on them."""

from __future__ import annotations

import io

from PIL import Image

KINDS = ("reencoded", "resized", "cropped", "shifted")


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """An image as JPEG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def near_copies(data: bytes) -> dict[str, bytes]:
    """The image (encoded bytes) re-encoded as JPEG q60, resized to 70%, cropped by 3 px on
    every side, and cropped by 3 px on two sides (shifted), keyed by KINDS."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    return {"reencoded": jpeg(image, 60), "resized": jpeg(image.resize((w * 7 // 10, h * 7 // 10))),
            "cropped": jpeg(image.crop((3, 3, w - 3, h - 3))), "shifted": jpeg(image.crop((3, 0, w, h - 3)))}
