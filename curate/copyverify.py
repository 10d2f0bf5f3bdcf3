"""Geometric verification of copy candidates (near_dedup's and decontaminate's `verified` method):
each image's SIFT keypoints (a map: `keypoints` packs them into one binary value per image), and a
pair's score, `inliers`: the matched keypoints (Lowe's ratio test on RootSIFT) that one similarity
transform (rotation, uniform scale, translation; RANSAC, OpenCV) within the bounds of a copy's
(SCALE_RANGE, MAX_ROTATION) carries from one image onto the other, of the image as it is or
mirrored, whichever is more, counted only where the colours agree at that transform (`_differing`).

A copy under a crop, a resize, a rotation, a border, a re-encode, a brightness change or an
overlaid word keeps most of its keypoints where the transform puts them; a distinct drawing
shares few. A look-alike that shares its keypoints and their geometry (one drawing in another
colourway, with a part recoloured or missing) does not share its colours: each image's packed
keypoints carry a small colour thumbnail, and a pair's thumbnails, one warped onto the other by
the fitted transform and brought to its brightness and contrast, must differ at no more than
MAX_DIFFERING of their pixels. The mirrored image's keypoints come from the packed ones without
the pixels: x is reflected, each SIFT descriptor's bins permuted (`MIRROR`) and the thumbnail
flipped.
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
# the colour check at the verified transform (`_differing`)
THUMB = 48  # the colour thumbnail packed beside the keypoints: this many px on the longer side
BLUR = 1.0  # Gaussian sigma (thumbnail px) both thumbnails are blurred by before they are compared
DIFFER = 32  # a pixel differs when a channel is this far apart (0-255) after the fitted gain and offset
MAX_DIFFERING = 0.01  # a copy's thumbnails differ at no more than this share of the pixels they share
MIN_COVERED = 0.25  # ... and share at least this share of the first one's
GAIN_RANGE = (0.6, 1.6)  # brightness and contrast +-20% each (x 0.64-1.44), and some slack
GAIN_PRIOR = 200.0  # variance (0-255 units) drawing the gain towards 1 where the image barely varies
FIT_ROUNDS = 3  # least-squares fits of the gain and offset, each without the last one's outliers
FIT_OUTLIER = 20.0  # a refit keeps the pixels within this (or 2.5 x the median residual) of the fit
_HEADER = np.dtype([("width", "<f4"), ("height", "<f4"), ("count", "<u4"), ("thumb_width", "<u2"),
                    ("thumb_height", "<u2")])


def _mirror_permutation() -> np.ndarray:
    """SIFT's bins (row cell, column cell, orientation) seen in the mirror image: mirroring turns the
    keypoint's frame over, so the row cells run the other way and orientation bin k becomes -k."""
    bins = np.arange(DESCRIPTOR_BYTES).reshape(4, 4, 8)
    return bins[::-1][:, :, (-np.arange(8)) % 8].ravel()


MIRROR = _mirror_permutation()


def keypoints(data: bytes) -> bytes:
    """An encoded image's packed keypoints: the image in grey at SIDE px on its longer side, its
    strongest KEYPOINTS SIFT keypoints as (x, y) in units of the longer side (float16) and their
    descriptors (uint8 x 128), then the image in RGB at THUMB px on its longer side (uint8), after a
    header of the scaled width and height (units of the longer side), the count and the thumbnail's
    size. An image with no keypoint (a blank one) packs a count of 0."""
    import cv2
    from PIL import Image

    from curate.images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (SIDE, SIDE))  # JPEG: decode at a reduced scale, no smaller than needed
        rgb = to_rgb(im)
    scale = SIDE / max(rgb.size)
    grey = rgb.convert("L").resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                                   Image.BICUBIC)
    thumb = rgb.resize((max(1, round(rgb.width * THUMB / max(rgb.size))),
                        max(1, round(rgb.height * THUMB / max(rgb.size)))), Image.BOX)
    found, descriptors = cv2.SIFT_create(nfeatures=KEYPOINTS).detectAndCompute(np.asarray(grey), None)
    found, descriptors = found[:KEYPOINTS], (np.zeros((0, DESCRIPTOR_BYTES)) if descriptors is None
                                             else descriptors[:KEYPOINTS])
    header = np.array([(grey.width / SIDE, grey.height / SIDE, len(found), *thumb.size)], _HEADER)
    xy = np.array([k.pt for k in found], np.float32).reshape(-1, 2) / SIDE
    return (header.tobytes() + xy.astype("<f2").tobytes()
            + np.clip(np.rint(descriptors), 0, 255).astype(np.uint8).tobytes() + thumb.tobytes())


class Keypoints:
    """Packed keypoints unpacked: `xy` (n x 2, units of the longer side), `descriptors` (RootSIFT,
    float32 n x 128), the scaled `width` and `height` of the image and its `thumb` (RGB, uint8)."""

    def __init__(self, packed: bytes, mirrored: bool = False):
        header = np.frombuffer(packed, _HEADER, count=1)[0]
        n, start = int(header["count"]), _HEADER.itemsize
        xy = np.frombuffer(packed, "<f2", count=2 * n, offset=start).reshape(n, 2).astype(np.float32)
        raw = np.frombuffer(packed, np.uint8, count=DESCRIPTOR_BYTES * n, offset=start + 4 * n)
        raw = raw.reshape(n, DESCRIPTOR_BYTES).astype(np.float32)
        shape = (int(header["thumb_height"]), int(header["thumb_width"]), 3)
        thumb = np.frombuffer(packed, np.uint8, count=int(np.prod(shape)),
                              offset=start + (4 + DESCRIPTOR_BYTES) * n).reshape(shape)
        self.width, self.height = float(header["width"]), float(header["height"])
        if mirrored:
            xy = np.stack([self.width - xy[:, 0], xy[:, 1]], axis=1)
            raw = raw[:, MIRROR]
            thumb = thumb[:, ::-1]
        self.thumb = np.ascontiguousarray(thumb)
        self.xy = np.ascontiguousarray(xy)
        self.descriptors = np.sqrt(raw / (raw.sum(axis=1, keepdims=True) + 1e-7))  # RootSIFT

    def __len__(self) -> int:
        return len(self.xy)


def _match(a: Keypoints, b: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints of a and b (xy, n x 2 each) that are RANSAC inliers of one similarity transform
    between a's and b's ratio-tested matches; none when it scales or turns more than a copy's does."""
    import cv2

    none = np.zeros((0, 2), np.float32)
    if len(a) < 3 or len(b) < 2:
        return none, none
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return none, none
    source = a.xy[[m.queryIdx for m in good]]
    target = b.xy[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)  # RANSAC's samples: the same pair scores the same wherever it is verified
    transform, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                  ransacReprojThreshold=TOLERANCE, maxIters=RANSAC_ITERATIONS,
                                                  refineIters=0)
    if transform is None:
        return none, none
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    turn = abs(float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0]))))
    if not (SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] and turn <= MAX_ROTATION):
        return none, none
    kept = mask.ravel().astype(bool)
    return source[kept], target[kept]


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform (2 x 3) carrying points `source` onto `target` (RANSAC's
    own is fitted to its best minimal sample, as refineIters=0 leaves it)."""
    x, y = source[:, 0].astype(np.float64), source[:, 1].astype(np.float64)
    one, zero = np.ones_like(x), np.zeros_like(x)
    system = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    (c, s, tx, ty), *_ = np.linalg.lstsq(system, np.concatenate([target[:, 0], target[:, 1]]), rcond=None)
    return np.array([[c, -s, tx], [s, c, ty]])


def _gain(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """The brightness and contrast change carrying colours b (n x 3) onto a: one gain (within
    GAIN_RANGE, drawn towards 1 where b barely varies) and an offset a channel, fitted by least
    squares FIT_ROUNDS times, each time on the pixels the last fit explains (the differing ones out)."""
    keep = np.ones(len(a), bool)
    for _ in range(FIT_ROUNDS):
        kept_a, kept_b = a[keep], b[keep]
        da, db = kept_a - kept_a.mean(axis=0), kept_b - kept_b.mean(axis=0)
        prior = GAIN_PRIOR * da.size
        gain = float(np.clip(((da * db).sum() + prior) / ((db * db).sum() + prior), *GAIN_RANGE))
        offset = kept_a.mean(axis=0) - gain * kept_b.mean(axis=0)
        residual = np.abs(a - gain * b - offset).max(axis=1)
        keep = residual <= max(FIT_OUTLIER, 2.5 * float(np.median(residual)))
        if keep.sum() < 3:
            break
    return gain, offset


def _differing(a: Keypoints, b: Keypoints, source: np.ndarray, target: np.ndarray) -> float:
    """The share of the pixels of a's thumbnail covered by b's, warped onto it at the transform of the
    inliers (source in a, target in b) and brought to its brightness and contrast (`_gain`), where
    the two are DIFFER or more apart in a channel; 1 where b covers under MIN_COVERED of a. Both are
    blurred by BLUR px first: resampling moves an edge or a thin stroke by a pixel, and the blur
    fades that, while a region in another colour still differs."""
    import cv2

    def pixels(points: Keypoints) -> np.ndarray:  # units of the longer side -> thumbnail pixels (centres)
        h, w = points.thumb.shape[:2]
        return np.array([[w / points.width, 0, -0.5], [0, h / points.height, -0.5], [0, 0, 1]])

    onto = (pixels(b) @ np.vstack([_similarity(source, target), [0, 0, 1]]) @ np.linalg.inv(pixels(a)))[:2]
    size, flags = (a.thumb.shape[1], a.thumb.shape[0]), cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(b.thumb.astype(np.float32), onto, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    covered = cv2.warpAffine(np.ones(b.thumb.shape[:2], np.float32), onto, size, flags=flags, borderValue=0) > 0.999
    covered = cv2.erode(covered.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # off the cut edge
    if covered.sum() < MIN_COVERED * covered.size:
        return 1.0
    mine = a.thumb.astype(np.float32)
    gain, offset = _gain(mine[covered], warped[covered])
    theirs = np.clip(warped * gain + offset.astype(np.float32), 0, 255)
    apart = np.abs(cv2.GaussianBlur(mine, (0, 0), BLUR) - cv2.GaussianBlur(theirs, (0, 0), BLUR)).max(axis=2)
    return float((apart[covered] >= DIFFER).mean())


def inliers(a: bytes, b: bytes) -> int:
    """A pair's verification score: keypoints (packed by `keypoints`) of `a` that one similarity
    transform carries onto matching keypoints of `b`, or of `b` mirrored, whichever is more, where
    the images' colours agree at that transform (`_differing` at most MAX_DIFFERING); 0 where they
    agree at neither."""
    first, scores = Keypoints(a), [0]
    for mirrored in (False, True):
        second = Keypoints(b, mirrored)
        source, target = _match(first, second)
        if len(source) >= 3 and _differing(first, second, source, target) <= MAX_DIFFERING:
            scores.append(len(source))
    return max(scores)
