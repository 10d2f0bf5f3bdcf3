"""Planted copies (curate/copies.py): every edit kind on real pool drawings, the frame trim, the
ground truth of which images are the same, the held-out split, and the sweeps' arithmetic."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from curate import copies


@pytest.fixture(scope="module")
def drawings(pool_table):
    """Distinct real pool drawings of at least 128 px."""
    out, seen = [], set()
    for data in pool_table.column("image").to_pylist():
        if data not in seen and min(Image.open(io.BytesIO(data)).size) >= 128:
            seen.add(data)
            out.append(data)
    return out[:12]


def _png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("kind", copies.KINDS)
def test_each_kind_changes_the_image_and_keeps_it_decodable(drawings, kind):
    rng = np.random.default_rng(0)
    original = Image.open(io.BytesIO(drawings[0])).convert("RGB")
    copy = Image.open(io.BytesIO(copies.copy_of(drawings[0], kind, rng))).convert("RGB")
    if copy.size == original.size:
        assert np.abs(np.asarray(copy, np.int16) - np.asarray(original, np.int16)).mean() > 0.2
    if kind == "crop":
        shrink = [1 - c / o for c, o in zip(copy.size, original.size)]
        assert all(0.019 <= s <= 0.101 for s in shrink), shrink
    if kind == "resize":
        assert 0.49 <= copy.width / original.width <= 0.81


def test_an_unknown_kind_is_refused(drawings):
    with pytest.raises(ValueError, match="unknown copy kind 'blur'"):
        copies.copy_of(drawings[0], "blur", np.random.default_rng(0))


def test_trim_removes_a_border_and_the_margin_inside_it():
    im = Image.new("RGB", (100, 80), "white")
    im.paste((200, 30, 30), (30, 20, 70, 60))  # the drawing: a red box on a white canvas
    framed = ImageOps.expand(im, 9, (0, 0, 0))
    assert copies.trim(framed).size == (40, 40)
    assert copies.trim(im).size == (40, 40)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), np.uint8))
    assert copies.trim(photo) is photo  # no uniform frame: as it is


def test_same_image_pairs_are_copies_and_mirror_images_not_distinct_drawings(drawings):
    rng = np.random.default_rng(1)
    mirror = _png(ImageOps.mirror(Image.open(io.BytesIO(drawings[0])).convert("RGB")))
    bordered = _png(ImageOps.expand(Image.open(io.BytesIO(drawings[1])).convert("RGB"), 20, "white"))
    images = drawings + [copies.copy_of(drawings[2], "jpeg", rng), mirror, bordered]
    a, b = copies.same_image_pairs(copies.thumbnails(images))
    n = len(drawings)
    found = set(zip(a.tolist(), b.tolist()))
    assert {(0, n + 1), (1, n + 2)} <= found  # the mirror image, the drawing on a wider white canvas
    assert all(j >= n for _, j in found), "two distinct drawings taken for one"
    kept = copies.distinct(copies.thumbnails(images))
    assert 0 in kept and n + 1 not in kept and n + 2 not in kept


def test_families_tie_numbered_variants_and_the_split_is_stable():
    assert copies.family("file:///svg/cards/jigsaw_blue_07.svg", "u") == "jigsaw_blue"
    assert copies.family("file:///svg/a/star_30pt11step.svg", "u") == "star_30pt11step"
    assert copies.family(None, "abc") == "abc"
    names = [f"drawing{i}" for i in range(2000)]
    held = copies.heldout(names)
    assert 0.25 < held.mean() < 0.35
    assert (copies.heldout(names) == held).all() and not copies.heldout(names, 0).any()


def test_sweeps_count_components_and_nearest_matches():
    # pool: originals 0, 1, 2 (families 0-2) and copies of 0 (row 3) and 1 (row 4); eval image 5
    # (family 3) with a copy in the pool (row 5 of the pool)
    planted = copies.CopySet(images=[b""] * 6, family=np.array([0, 1, 2, 0, 1, 3]),
                             kind=np.array(["original"] * 3 + ["crop", "jpeg", "crop"], object),
                             eval_images=[b""], eval_family=np.array([3]))
    # edges: copy 3 ~ original 0 at 2; copy 4 ~ original 1 at 5; copy 3 ~ original 2 at 6 (a false merge)
    pairs = (np.array([0, 1, 2]), np.array([3, 4, 3]), np.array([2, 5, 6]))
    result = copies.dedup_sweep(planted, pairs, [1, 2, 5, 6])
    assert result.recall.tolist() == [0, 0.5, 1, 1]
    assert result.recall_by_kind["crop"].tolist() == [0, 1, 1, 1]
    assert result.false_merge.tolist() == [0, 0, 0, pytest.approx(2 / 3)]  # originals 0 and 2 merged
    nearest = (np.zeros(6, np.int64), np.array([9.0, 9, 3, 9, 9, 4]))
    decon = copies.decontaminate_sweep(planted, nearest, [3, 4])
    assert decon.recall.tolist() == [0, 1]
    assert decon.false_merge.tolist() == [pytest.approx(1 / 3)] * 2  # original 2 is within 3 of the eval image
    assert copies.at_false_merge(result, 0.0) == 2 and copies.at_false_merge(decon, 0.1) is None
