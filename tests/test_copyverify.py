"""Geometric verification (curate.copyverify) on real pool drawings: a copy under a crop, a rotation,
a border or mixed edits keeps many RANSAC inliers with its original, distinct drawings few, a drawing
in another colourway none (its colours differ at the verified transform); the mirrored keypoints
derived from the packed ones are those of the mirror image."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from curate import copies
from curate.copyverify import KEYPOINTS, Keypoints, inliers, keypoints

ACCEPT = 12  # inliers that the copies below reach and distinct drawings do not


@pytest.fixture(scope="module")
def drawings(pool_table) -> list[bytes]:
    """Distinct test pool drawings (thumbnails apart, as the benchmark counts them) of at least 128 px
    with at least 60 keypoints: 20 of them."""
    images = [d for d in dict.fromkeys(pool_table.column("image").to_pylist())
              if min(Image.open(io.BytesIO(d)).size) >= 128]
    images = [images[i] for i in copies.distinct(copies.thumbnails(images))]
    return [d for d in images if len(Keypoints(keypoints(d))) >= 60][:20]


def test_packed_keypoints_round_trip(drawings):
    packed = keypoints(drawings[0])
    points = Keypoints(packed)
    assert 60 <= len(points) <= KEYPOINTS and points.descriptors.shape == (len(points), 128)
    assert np.allclose(np.linalg.norm(points.descriptors, axis=1), 1, atol=1e-3)  # RootSIFT: unit L2
    with Image.open(io.BytesIO(drawings[0])) as im:
        assert points.width == pytest.approx(im.width / max(im.size), abs=0.01)
    assert (points.xy >= 0).all() and (points.xy[:, 0] <= points.width + 1e-3).all()


def test_mirrored_keypoints_are_those_of_the_mirror_image(drawings):
    for data in drawings[:5]:
        with Image.open(io.BytesIO(data)) as im:
            out = io.BytesIO()
            ImageOps.mirror(im.convert("RGB")).save(out, format="PNG")
        derived, detected = Keypoints(keypoints(data), mirrored=True), Keypoints(keypoints(out.getvalue()))
        # each detected keypoint of the mirror image has a derived one at its place with its descriptor
        # (SIFT may put two keypoints, two orientations, at one place: the best of those there counts)
        close = np.linalg.norm(detected.xy[:, None] - derived.xy[None], axis=2) < 0.004
        similar = np.where(close, detected.descriptors @ derived.descriptors.T, -1).max(axis=1)
        placed = close.any(axis=1)
        assert placed.mean() > 0.8 and (similar[placed] > 0.9).mean() > 0.8, (placed.mean(), similar[placed])


def test_copies_verify_and_distinct_drawings_do_not(drawings):
    rng = np.random.default_rng(0)
    packed = [keypoints(d) for d in drawings]
    # an overlaid word (`text`, and some `mixed` copies) over MAX_DIFFERING of the thumbnail fails the
    # colour check: their bars are lower
    for kind in ("crop", "rotate", "border", "flip", "text", "mixed"):
        scores = [inliers(keypoints(copies.copy_of(d, kind, rng)), p) for d, p in zip(drawings, packed)]
        assert np.mean(np.array(scores) >= ACCEPT) >= {"text": 0.3, "mixed": 0.7}.get(kind, 0.8), (kind, scores)
    distinct = [inliers(packed[i], packed[j]) for i in range(len(packed)) for j in range(i + 1, len(packed))]
    assert np.mean(np.array(distinct) >= ACCEPT) <= 0.02, sorted(distinct)[-10:]


def test_a_pair_scores_the_same_each_time_and_a_blank_image_scores_nothing(drawings):
    a, b = keypoints(drawings[1]), keypoints(copies.copy_of(drawings[1], "mixed", np.random.default_rng(1)))
    assert len({inliers(a, b) for _ in range(3)}) == 1
    blank = io.BytesIO()
    Image.new("RGB", (200, 150), "white").save(blank, format="PNG")
    packed = keypoints(blank.getvalue())
    assert len(Keypoints(packed)) == 0 and inliers(packed, a) == 0 == inliers(a, packed)


def colourful(data: bytes) -> bool:
    """Whether a drawing has colour over a tenth of it at least (a channel 80 off its pixel's others)."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB").resize((48, 48)), np.int16)
    return ((rgb.max(axis=2) - rgb.min(axis=2)) >= 80).mean() >= 0.1


def test_a_colourway_twin_is_not_a_copy_and_a_brightness_change_is(drawings):
    """One drawing in another colourway (its channels swapped: red turns blue) keeps its grey
    keypoints and their geometry; the colours at the verified transform tell it from a copy."""
    rng = np.random.default_rng(2)
    chosen = [d for d in drawings if colourful(d)][:8]
    assert len(chosen) >= 4
    for data in chosen:
        with Image.open(io.BytesIO(data)) as im:
            r, g, b = im.convert("RGB").split()
        twin = io.BytesIO()
        Image.merge("RGB", (b, r, g)).save(twin, format="PNG")
        packed = keypoints(data)
        assert inliers(packed, keypoints(twin.getvalue())) == 0
        assert inliers(packed, keypoints(copies.copy_of(data, "colour", rng))) >= ACCEPT
