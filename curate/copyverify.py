"""Geometric verification of copy candidates (near_dedup's and decontaminate's `verified` method):
each image's SIFT keypoints (a map: `keypoints` packs them into one binary value per image), and a
pair's score, `inliers`: the matched keypoints (Lowe's ratio test on RootSIFT) that one similarity
transform (rotation, uniform scale, translation; RANSAC, OpenCV) within the bounds of a copy's
(SCALE_RANGE, MAX_ROTATION) carries from one image onto the other, of the image as it is or
mirrored, whichever is more.

A copy under a crop, a resize, a rotation, a border, a re-encode, a brightness change or an
overlaid word keeps most of its keypoints where the transform puts them; a distinct drawing
shares few. The mirrored image's keypoints come from the packed ones without the pixels: x is
reflected and each SIFT descriptor's bins permuted (`MIRROR`).
"""

from __future__ import annotations

import io

import numpy as np

SIDE = 256  # images are scaled to this longer side (up or down) before detection
KEYPOINTS = 256  # the strongest this many SIFT keypoints of an image are kept
RATIO = 0.8  # Lowe's ratio test: a match is kept when its distance is under RATIO of the second best
TOLERANCE = 0.02  # RANSAC's reprojection error, a share of the longer side
RANSAC_ITERATIONS = 1000
# a copy's transform (units of each image's longer side): a crop or a border rescales by at most
# ~1.3, a rotation turns by at most 8 degrees; a match outside these bounds is not a copy
SCALE_RANGE = (0.7, 1.45)
MAX_ROTATION = 12.0  # degrees
DESCRIPTOR_BYTES = 128  # SIFT: 4 x 4 cells of 8 orientation bins
_HEADER = np.dtype([("width", "<f4"), ("height", "<f4"), ("count", "<u4")])


def _mirror_permutation() -> np.ndarray:
    """SIFT's bins (row cell, column cell, orientation) seen in the mirror image: mirroring turns the
    keypoint's frame over, so the row cells run the other way and orientation bin k becomes -k."""
    bins = np.arange(DESCRIPTOR_BYTES).reshape(4, 4, 8)
    return bins[::-1][:, :, (-np.arange(8)) % 8].ravel()


MIRROR = _mirror_permutation()


def keypoints(data: bytes) -> bytes:
    """An encoded image's packed keypoints: the image in grey at SIDE px on its longer side, its
    strongest KEYPOINTS SIFT keypoints as (x, y) in units of the longer side (float16) and their
    descriptors (uint8 x 128), after a header of the scaled width and height (units of the longer
    side) and the count. An image with no keypoint (a blank one) packs a count of 0."""
    import cv2
    from PIL import Image

    from curate.images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (SIDE, SIDE))  # JPEG: decode at a reduced scale, no smaller than needed
        grey = to_rgb(im).convert("L")
    scale = SIDE / max(grey.size)
    grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.BICUBIC)
    found, descriptors = cv2.SIFT_create(nfeatures=KEYPOINTS).detectAndCompute(np.asarray(grey), None)
    found, descriptors = found[:KEYPOINTS], (np.zeros((0, DESCRIPTOR_BYTES)) if descriptors is None
                                             else descriptors[:KEYPOINTS])
    header = np.array([(grey.width / SIDE, grey.height / SIDE, len(found))], _HEADER)
    xy = np.array([k.pt for k in found], np.float32).reshape(-1, 2) / SIDE
    return (header.tobytes() + xy.astype("<f2").tobytes()
            + np.clip(np.rint(descriptors), 0, 255).astype(np.uint8).tobytes())


class Keypoints:
    """Packed keypoints unpacked: `xy` (n x 2, units of the longer side), `descriptors` (RootSIFT,
    float32 n x 128) and the scaled `width` of the image."""

    def __init__(self, packed: bytes, mirrored: bool = False):
        header = np.frombuffer(packed, _HEADER, count=1)[0]
        n, start = int(header["count"]), _HEADER.itemsize
        xy = np.frombuffer(packed, "<f2", count=2 * n, offset=start).reshape(n, 2).astype(np.float32)
        raw = np.frombuffer(packed, np.uint8, count=DESCRIPTOR_BYTES * n, offset=start + 4 * n)
        raw = raw.reshape(n, DESCRIPTOR_BYTES).astype(np.float32)
        self.width = float(header["width"])
        if mirrored:
            xy = np.stack([self.width - xy[:, 0], xy[:, 1]], axis=1)
            raw = raw[:, MIRROR]
        self.xy = np.ascontiguousarray(xy)
        self.descriptors = np.sqrt(raw / (raw.sum(axis=1, keepdims=True) + 1e-7))  # RootSIFT

    def __len__(self) -> int:
        return len(self.xy)


def _inliers(a: Keypoints, b: Keypoints) -> int:
    """Inliers of the similarity transform RANSAC finds between a's and b's ratio-tested matches; 0
    when it scales or turns more than a copy's does."""
    import cv2

    if len(a) < 3 or len(b) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return 0
    source = a.xy[[m.queryIdx for m in good]]
    target = b.xy[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)  # RANSAC's samples: the same pair scores the same wherever it is verified
    transform, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                  ransacReprojThreshold=TOLERANCE, maxIters=RANSAC_ITERATIONS,
                                                  refineIters=0)
    if transform is None:
        return 0
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    turn = abs(float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0]))))
    return int(mask.sum()) if SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] and turn <= MAX_ROTATION else 0


def inliers(a: bytes, b: bytes) -> int:
    """A pair's verification score: keypoints (packed by `keypoints`) of `a` that one similarity
    transform carries onto matching keypoints of `b`, or of `b` mirrored, whichever is more."""
    first = Keypoints(a)
    return max(_inliers(first, Keypoints(b)), _inliers(first, Keypoints(b, mirrored=True)))
