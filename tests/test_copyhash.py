"""The hash codes of copy detection (curate/copyhash.py): their pigeonhole layout and the edits
the multi-hash code is normalised against, on real pool drawings."""

import io

from PIL import Image, ImageOps

from curate import copyhash


def test_chunks_cover_every_bit_layout():
    # radius 0 of 192 bits still cuts 6 chunks of 32 bits; 1 word at radius 1, two of 32
    assert copyhash.chunk_layout(192, 0) == (6, 32) and copyhash.chunk_layout(64, 1) == (2, 32)
    assert copyhash.chunk_layout(192, 14) == (15, 12) and copyhash.chunk_layout(64, 4) == (5, 12)


def test_copy_hashes_are_the_same_for_a_border_and_a_mirror_image(pool_table):
    data = next(d for d in pool_table.column("image").to_pylist() if min(Image.open(io.BytesIO(d)).size) >= 128)
    im = Image.open(io.BytesIO(data)).convert("RGB")
    variants = []
    for edited in (ImageOps.mirror(im), ImageOps.expand(im, 25, (0, 0, 0))):
        out = io.BytesIO()
        edited.save(out, format="PNG")
        variants.append(copyhash.copy_hashes(out.getvalue()))
    original = copyhash.copy_hashes(data)
    assert variants[0] == original
    assert sum(bin(a ^ b).count("1") for a, b in zip(variants[1], original)) <= 6
