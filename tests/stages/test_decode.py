import io

import numpy as np
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


def _jpeg_variants(real_jpeg: bytes) -> list[bytes]:
    """The JPEG as baseline, progressive, grey, CMYK and 4:4:4, each whole, cut short at several
    points, with bytes overwritten and with a span zeroed (seeded)."""
    rng = np.random.default_rng(0)
    im = Image.open(io.BytesIO(real_jpeg)).convert("RGB")
    encodings = []
    for mode, options in (("RGB", {}), ("RGB", {"progressive": True}), ("L", {"optimize": True}), ("CMYK", {}),
                          ("RGB", {"subsampling": 0, "quality": 95})):
        out = io.BytesIO()
        im.convert(mode).save(out, "JPEG", **options)
        encodings.append(out.getvalue())
    variants = []
    for data in encodings:
        n = len(data)
        variants += [data, *(data[:cut] for cut in (*rng.integers(200, n, 6).tolist(), n - 1, n - 2, n - 5))]
        for flips in (1, 4, 16, 16):
            broken = np.frombuffer(data, np.uint8).copy()
            broken[rng.integers(0, n, flips)] = rng.integers(0, 256, flips)
            variants.append(broken.tobytes())
        start = int(rng.integers(n // 4, n // 2))
        variants.append(data[:start] + bytes(1000) + data[start + 1000:])
    return variants


def test_jpegs_decoded_at_reduced_scale_fail_as_a_full_decode_does(real_jpeg):
    """decode reads a JPEG at 1/8 scale (its pixels are not kept): every file a full-size load fails
    is rejected with that load's error, and every file it reads is kept at its full size."""
    variants = _jpeg_variants(real_jpeg)
    verdict = Decode(DecodeConfig()).process(_table(variants))
    full = []  # (error or None, size) of a full-size load
    for data in variants:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                full.append((None, im.size))
        except OSError as exc:
            full.append((str(exc)[:200], None))
    assert [reason is None for reason in verdict.reasons] == [error is None for error, _ in full]
    rejected = [i for i, (error, _) in enumerate(full) if error and not error.startswith("cannot identify")]
    assert [verdict.values[i] for i in rejected] == [full[i][0] for i in rejected]
    sizes = list(zip(verdict.table.column("width").to_pylist(), verdict.table.column("height").to_pylist()))
    kept = [i for i, (error, _) in enumerate(full) if error is None]
    assert [sizes[i] for i in kept] == [full[i][1] for i in kept]
    assert len(rejected) > 10 and len(kept) > 10  # both kinds are tested
