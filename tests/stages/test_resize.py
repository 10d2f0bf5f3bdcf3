import io

import pyarrow as pa
from PIL import Image

from curate.stages.resize import Resize, ResizeConfig


def _run(config, images):
    stage = Resize(config)
    stage.setup()
    return stage.process(pa.table({"uid": [f"{i:032x}" for i in range(len(images))],
                                   "image": pa.array(images, pa.binary())}))


def test_border_mode_gives_square_images(pool_table):
    images = pool_table.column("image").to_pylist()[:5]
    verdict = _run(ResizeConfig(image_size=64, resize_mode="border"), images)
    assert verdict.reasons.tolist() == [None] * 5
    for data, w, h in zip(verdict.table.column("image").to_pylist(), verdict.table.column("width").to_pylist(),
                          verdict.table.column("height").to_pylist()):
        assert Image.open(io.BytesIO(data)).size == (64, 64) == (w, h)


def test_keep_ratio_keeps_the_aspect_ratio(pool_table):
    data = pool_table.column("image")[3].as_py()
    w0, h0 = Image.open(io.BytesIO(data)).size
    verdict = _run(ResizeConfig(image_size=100, resize_mode="keep_ratio", encode_format="png", encode_quality=6),
                   [data])
    out = Image.open(io.BytesIO(verdict.table.column("image")[0].as_py()))
    assert out.format == "PNG" and min(out.size) == 100
    assert abs(out.size[0] / out.size[1] - w0 / h0) < 0.05


def test_undecodable_image_is_rejected_not_crashed():
    verdict = _run(ResizeConfig(), [b"not an image"])
    assert verdict.reasons.tolist() == ["resize_failed"]
