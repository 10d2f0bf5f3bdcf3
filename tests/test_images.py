"""Images upright and in 8 bits wherever a stage looks at pixels (issue 17, item 12): a photo stored
sideways with EXIF orientation 6 is decoded, resized, hashed and embedded upright; a 16-bit PNG
is resized and preprocessed at its grey level, not clipped to white."""

import io

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curate.images import ORIENTATION, open_rgb
from curate.stages.decode import Decode, DecodeConfig
from curate.stages.near_dedup import phash
from curate.stages.resize import Resize, ResizeConfig

GREY_16, GREY_8 = 20000, round(20000 / 257)  # a 16-bit level and the 8-bit level it shows as (78)


def upright_photo() -> Image.Image:
    """60 x 40: red left half, then a green bar along the bottom of the white right half."""
    im = Image.new("RGB", (60, 40), "white")
    im.paste((255, 0, 0), (0, 0, 30, 40))
    im.paste((0, 160, 0), (30, 32, 60, 40))
    return im


def sideways_jpeg() -> bytes:
    """The photo as a camera held sideways stores it: pixels turned a quarter, EXIF orientation 6
    (show it turned 90 degrees clockwise), and a camera make beside the tag."""
    stored = upright_photo().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ORIENTATION], exif[0x010F] = 6, "TestCam"
    out = io.BytesIO()
    stored.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def assert_upright(im: Image.Image) -> None:
    assert im.size == (60, 40)
    red, white, green = im.getpixel((10, 20)), im.getpixel((45, 10)), im.getpixel((45, 37))
    assert red[0] > 200 > red[1] and min(white) > 200 and green[1] > 120 > green[0]


def png16(channels: int) -> bytes:
    """A 12 x 8 PNG of 16 bits a channel at grey GREY_16 (opaque where it has alpha)."""
    if channels == 1:
        out = io.BytesIO()
        Image.fromarray(np.full((8, 12), GREY_16, np.uint16)).save(out, "PNG")
        return out.getvalue()
    pixels = np.full((8, 12, channels), GREY_16, np.uint16)
    if channels == 4:
        pixels[..., 3] = 65535
    return cv2.imencode(".png", pixels)[1].tobytes()


def table(images):
    return pa.table({"uid": [str(i) for i in range(len(images))], "image": pa.array(images, pa.binary())})


def test_decode_writes_a_sideways_photo_upright_with_its_other_exif():
    data = sideways_jpeg()
    assert Image.open(io.BytesIO(data)).size == (40, 60)  # as stored
    decode = Decode(DecodeConfig())
    decode.setup()
    verdict = decode.process(table([data]))
    assert verdict.reasons.tolist() == [None]
    assert (verdict.table.column("width")[0].as_py(), verdict.table.column("height")[0].as_py()) == (60, 40)
    fixed = Image.open(io.BytesIO(verdict.table.column("image")[0].as_py()))
    assert fixed.format == "JPEG" and verdict.table.column("image_format")[0].as_py() == "jpeg"
    assert ORIENTATION not in fixed.getexif() and fixed.getexif()[0x010F] == "TestCam"
    assert_upright(fixed.convert("RGB"))  # upright for a reader that ignores EXIF, as trainers do
    kept = Decode(DecodeConfig(apply_orientation=False)).process(table([data]))
    assert kept.table.column("image")[0].as_py() == data and kept.table.column("width")[0].as_py() == 60


def test_resize_clip_preprocessing_and_phash_see_the_photo_upright():
    data = sideways_jpeg()
    resize = Resize(ResizeConfig(image_size=30, resize_mode="keep_ratio_largest"))
    resize.setup()
    verdict = resize.process(table([data]))
    out = Image.open(io.BytesIO(verdict.table.column("image")[0].as_py())).convert("RGB")
    assert out.size == (30, 20) and verdict.table.column("width")[0].as_py() == 30
    assert_upright(out.resize((60, 40)))
    assert_upright(open_rgb(data))
    upright = io.BytesIO()
    upright_photo().save(upright, "JPEG", quality=95)
    assert bin(phash(data) ^ phash(upright.getvalue())).count("1") <= 2


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_pngs_keep_their_grey_through_resize(channels):
    resize = Resize(ResizeConfig(image_size=24, resize_mode="border"))  # to JPEG: 8 bits, whatever came in
    resize.setup()
    verdict = resize.process(table([png16(channels)]))
    assert verdict.reasons.tolist() == [None]
    pixels = np.asarray(Image.open(io.BytesIO(verdict.table.column("image")[0].as_py())).convert("RGB"))
    assert np.abs(pixels[8:16, 4:20].astype(int) - GREY_8).max() <= 2  # inside the image (the border pads are white)
    assert np.abs(np.asarray(open_rgb(png16(channels))).astype(int) - GREY_8).max() <= 1


def test_sixteen_bit_pngs_embed_and_hash_as_their_8_bit_copies(embedding_checkpoint):
    from curate.models.embedder import ClipEmbedder

    ramp = np.tile(np.linspace(0, 65535, 48), (48, 1)) * np.linspace(0.2, 1, 48)[:, None]  # a shaded 16-bit ramp
    wide, narrow = io.BytesIO(), io.BytesIO()
    Image.fromarray(ramp.astype(np.uint16)).save(wide, "PNG")
    Image.fromarray(np.rint(ramp.astype(np.uint16) / 257).astype(np.uint8)).save(narrow, "PNG")
    embedder = ClipEmbedder(str(embedding_checkpoint))
    embedder._load()
    assert float((embedder._preprocess(wide.getvalue()) - embedder._preprocess(narrow.getvalue())).abs().max()) < 1e-6
    assert phash(wide.getvalue()) == phash(narrow.getvalue())
