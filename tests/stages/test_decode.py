import io

import pyarrow as pa
from PIL import Image

from curate.stages.decode import Decode, DecodeConfig


def _table(images):
    return pa.table({"uid": [f"{i:032x}" for i in range(len(images))], "image": pa.array(images, pa.binary())})


def test_every_fault_class_gets_its_own_reason(fault_images):
    stage = Decode(DecodeConfig())
    stage.setup()
    names = list(fault_images)
    verdict = stage.process(_table([fault_images[n] for n in names]))
    got = dict(zip(names, verdict.reasons))
    assert got["missing_image"] == "missing_image"
    assert got["empty_image"] == "empty_image"
    assert got["corrupt_image"] == "corrupt_image"
    assert got["truncated_image"] == "truncated_image"
    assert got["truncated_png"] == "truncated_image"
    assert got["decompression_bomb"] == "decompression_bomb"
    assert all(v for v in verdict.values[1:])  # every rejection but 'missing' says what it saw


def test_real_images_are_kept_with_their_size(pool_table):
    images = pool_table.column("image").to_pylist()[:20]
    verdict = Decode(DecodeConfig()).process(_table(images))
    assert verdict.reasons.tolist() == [None] * 20
    for data, w, h, fmt in zip(images, verdict.table.column("width").to_pylist(),
                               verdict.table.column("height").to_pylist(),
                               verdict.table.column("image_format").to_pylist()):
        assert Image.open(io.BytesIO(data)).size == (w, h)
        assert fmt == "jpeg"


def test_pixel_limit_is_a_parameter(real_jpeg):
    w, h = Image.open(io.BytesIO(real_jpeg)).size
    verdict = Decode(DecodeConfig(max_pixels=w * h - 1)).process(_table([real_jpeg]))
    assert verdict.reasons.tolist() == ["decompression_bomb"]
    assert Decode(DecodeConfig(max_pixels=w * h)).process(_table([real_jpeg])).reasons.tolist() == [None]


def test_headers_cut_short_are_truncated_not_a_crash(real_jpeg):
    png = io.BytesIO()
    Image.open(io.BytesIO(real_jpeg)).save(png, format="PNG")
    verdict = Decode(DecodeConfig()).process(_table([png.getvalue()[:20], real_jpeg[:300]]))
    assert verdict.reasons[0] in ("truncated_image", "corrupt_image") and verdict.reasons[1] is not None
