"""Planted copies for copy detection: the edits a copy survives, the split that keeps trained
models away from the originals they are measured on, and the sweep that scores a method.

A copy is an original under one edit (`EDITS`: crops of 2-10% a side, JPEG at quality 30-90,
brightness and contrast +-20%, a resize to 50-80%, a rotation of 2-8 degrees, a mirror, a
border, overlaid text) or under two or three of them and a JPEG re-encode (`mixed`). Distinct
images are the hard negatives: other drawings of the same pool, some of them variants of one
another (a smiley with and without a tear, a card in two decks).

Ground truth needs care on a real pool: the same drawing sits in several folders and generated
families (stars with 88 and 91 points) render alike, so `distinct` keeps one image of each set
whose 32 x 32 thumbnails, each trimmed of its uniform frame, are within `SAME_RMS` of each other
or of each other's mirror image (a drawing on a wider canvas is the drawing with a border, and a
method that survives mirroring cannot tell a drawing from its mirror image).

`heldout` splits images by a hash of their family (the file name without a trailing number, or
the uid): a descriptor trains on the rest, so variants of a drawing never straddle the split.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

HELDOUT_PERCENT = 30  # share of families held out of descriptor training
SAME_RMS = 0.01  # thumbnails (32 x 32 RGB, values 0-1) this close are the same image
THUMB = 32
TRIM_TOLERANCE, TRIM_PASSES, TRIM_MIN_SIDE = 32, 3, 8  # see `trim`
COPY_QUALITY = 95  # the encoding of a copy whose edit is not a re-encode
WORDS = ("copyright", "SAMPLE", "(c) 2024", "stock photo", "meme", "preview", "www.example.com", "DRAFT")


def family(url: str | None, uid: str) -> str:
    """What ties variants of one drawing together: the URL's file name without its extension and a
    trailing `_NN`, or the uid where there is no URL."""
    if not url:
        return uid
    name = url.rsplit("/", 1)[-1]
    return re.sub(r"(_\d+)?(\.[A-Za-z0-9]+)?$", "", name) or uid


def heldout(families: list[str], percent: int = HELDOUT_PERCENT) -> np.ndarray:
    """True for the families held out of training (about `percent`%, by a hash of the family)."""
    buckets = [int(hashlib.sha1(f.encode()).hexdigest()[:8], 16) % 100 for f in families]
    return np.array(buckets, np.int64) < percent


def read_images(paths: list[str], columns: tuple[str, ...] = ("uid", "url", "image")) -> dict[str, list]:
    """`columns` of every sample of the inputs `paths` (any `curate run` input) that the reader
    keeps and that has image bytes."""
    from curate.io.readers.tasks import plan_inputs, read_task

    out: dict[str, list] = {c: [] for c in columns}
    for task in plan_inputs(list(paths)):
        for batch in read_task(task, 1024):
            kept = batch.kept()
            table = kept.filter(kept["image"].is_valid())
            for c in columns:
                out[c] += table[c].to_pylist() if c in table.column_names else [None] * table.num_rows
    return out


def _encode(im: Image.Image, quality: int = COPY_QUALITY) -> bytes:
    out = io.BytesIO()
    im.convert("RGB").save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def crop(im: Image.Image, rng: np.random.Generator, low: float = 0.02, high: float = 0.10) -> Image.Image:
    """Each side shortened by `low`-`high` of its length, split at random between its two ends."""
    w, h = im.size
    cut_w, cut_h = (max(1, round(s * rng.uniform(low, high))) for s in (w, h))
    left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
    return im.crop((left, top, w - (cut_w - left), h - (cut_h - top)))


def jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encoded as JPEG at quality 30-90."""
    return Image.open(io.BytesIO(_encode(im, int(rng.integers(30, 91))))).convert("RGB")


def colour(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness and contrast each scaled by 0.8-1.2."""
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))


def resize(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shrunk to 50-80% of its size."""
    scale = rng.uniform(0.5, 0.8)
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)


def rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Turned 2-8 degrees either way about its centre, on white."""
    angle = rng.uniform(2, 8) * rng.choice([-1, 1])
    return im.rotate(angle, Image.BICUBIC, expand=False, fillcolor="white")


def flip(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mirrored left to right."""
    return ImageOps.mirror(im)


def border(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A frame 3-12% of the longer side wide, black, grey, white or a random colour."""
    width = max(1, round(max(im.size) * rng.uniform(0.03, 0.12)))
    colours = [(0, 0, 0), (128, 128, 128), (255, 255, 255), tuple(int(c) for c in rng.integers(0, 256, 3))]
    return ImageOps.expand(im, width, colours[int(rng.integers(len(colours)))])


def text(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption-like word (8-15% of the height tall) drawn at a random place in a random colour."""
    im = im.copy()
    size = max(8, round(im.height * rng.uniform(0.08, 0.15)))
    font = ImageFont.load_default(size=size)
    word = WORDS[int(rng.integers(len(WORDS)))]
    left, top, right, bottom = font.getbbox(word)
    x = int(rng.integers(0, max(1, im.width - (right - left)) + 1))
    y = int(rng.integers(0, max(1, im.height - (bottom - top)) + 1))
    ImageDraw.Draw(im).text((x - left, y - top), word, font=font, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return im


EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": crop, "jpeg": jpeg, "colour": colour, "resize": resize, "rotate": rotate, "flip": flip, "border": border,
    "text": text}
KINDS = (*EDITS, "mixed")  # every kind of planted copy


def copy_of(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """An encoded copy of image `data` under edit `kind` (one of KINDS): `mixed` applies two or three
    other edits and ends with a JPEG re-encode at quality 30-90."""
    with Image.open(io.BytesIO(data)) as opened:
        im = opened.convert("RGB")
    if kind == "mixed":
        others = [k for k in EDITS if k != "jpeg"]
        for name in rng.choice(others, size=int(rng.integers(2, 4)), replace=False):
            im = EDITS[str(name)](im, rng)
        return _encode(im, int(rng.integers(30, 91)))
    if kind not in EDITS:
        raise ValueError(f"unknown copy kind {kind!r}; expected one of {', '.join(KINDS)}")
    edited = EDITS[kind](im, rng)
    return _encode(edited, 100) if kind == "jpeg" else _encode(edited)


def trim(im: Image.Image) -> Image.Image:
    """The image without its uniform frame: rows and columns at the edges whose every pixel is within
    TRIM_TOLERANCE (in each channel) of the frame's median colour are cut, up to TRIM_PASSES times (a
    border, then the white margin inside it). An image with no such frame, or that would be cut to
    under TRIM_MIN_SIDE pixels, is returned as it is."""
    rgb = np.asarray(im.convert("RGB"), np.int16)
    top, left, bottom, right = 0, 0, rgb.shape[0], rgb.shape[1]
    for _ in range(TRIM_PASSES):
        part = rgb[top:bottom, left:right]
        frame = np.concatenate([part[0], part[-1], part[:, 0], part[:, -1]])
        far = (np.abs(part - np.median(frame, axis=0)) > TRIM_TOLERANCE).any(axis=2)
        rows, cols = np.flatnonzero(far.any(axis=1)), np.flatnonzero(far.any(axis=0))
        if not len(rows) or rows[-1] - rows[0] + 1 < TRIM_MIN_SIDE or cols[-1] - cols[0] + 1 < TRIM_MIN_SIDE:
            break
        if rows[0] == 0 and cols[0] == 0 and rows[-1] == part.shape[0] - 1 and cols[-1] == part.shape[1] - 1:
            break
        top, left, bottom, right = top + rows[0], left + cols[0], top + rows[-1] + 1, left + cols[-1] + 1
    return im if (top, left, bottom, right) == (0, 0, *rgb.shape[:2]) else im.crop((left, top, right, bottom))


def open_trimmed(data: bytes, side: int | None = None) -> Image.Image:
    """Encoded image bytes as upright 8-bit RGB without its uniform frame (`trim`); with `side`,
    decoded at a reduced scale of at least `side` pixels where the format allows (JPEG draft: faster,
    but the frame is then found to a few pixels)."""
    from curate.images import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        if side is not None:
            im.draft("RGB", (side, side))
        return trim(to_rgb(im))


def thumbnails(images: list[bytes]) -> np.ndarray:
    """32 x 32 RGB thumbnails (float32 0-1, flattened rows) of encoded images, trimmed of their frames."""
    out = np.empty((len(images), THUMB * THUMB * 3), np.float32)
    for i, data in enumerate(images):
        im = open_trimmed(data)
        out[i] = np.asarray(im.resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel() / 255
    return out


def _mirrored(thumbs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(thumbs.reshape(-1, THUMB, THUMB, 3)[:, :, ::-1].reshape(len(thumbs), -1))


def same_image_pairs(thumbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of thumbnails within SAME_RMS of each other or of each other's mirror image."""
    import faiss

    dim = thumbs.shape[1]
    index = faiss.IndexFlatL2(dim)
    index.add(thumbs)
    pairs = []
    for query in (thumbs, _mirrored(thumbs)):
        lims, _, labels = index.range_search(np.ascontiguousarray(query), SAME_RMS ** 2 * dim)
        rows = np.repeat(np.arange(len(thumbs)), np.diff(lims).astype(np.int64))
        pairs.append(np.stack([rows, labels]))
    a, b = np.concatenate(pairs, axis=1)
    keep = a != b
    return np.minimum(a, b)[keep], np.maximum(a, b)[keep]


def distinct(thumbs: np.ndarray) -> np.ndarray:
    """Indices of one image per set of the same image (connected components of `same_image_pairs`):
    each set's first index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = same_image_pairs(thumbs)
    n = len(thumbs)
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    _, first = np.unique(label, return_index=True)
    return np.sort(first)


@dataclass
class CopySet:
    """A pool with planted copies and, optionally, an evaluation set they were copied from.

    `images` are the pool's rows: originals and distinct images (`kind` "original") and copies;
    `family` numbers the distinct image a row shows (a copy has its original's), `eval_images`
    (with `eval_family`) the evaluation set whose copies are in the pool with those family numbers."""

    images: list[bytes]
    family: np.ndarray
    kind: np.ndarray
    eval_images: list[bytes]
    eval_family: np.ndarray


def plant(pool: list[bytes], copied: np.ndarray, eval_images: list[bytes], eval_copied: np.ndarray,
          seed: int = 0, kinds: tuple[str, ...] = KINDS) -> CopySet:
    """Pool images `pool` (distinct) with one copy of each kind of `pool[copied]` and of
    `eval_images[eval_copied]` (distinct too) added: a CopySet."""
    rng = np.random.default_rng(seed)
    images, family, kind = list(pool), list(range(len(pool))), ["original"] * len(pool)
    sources = [(pool[i], int(i)) for i in copied] + [(eval_images[i], len(pool) + int(i)) for i in eval_copied]
    for data, fam in sources:
        for name in kinds:
            images.append(copy_of(data, name, rng))
            family.append(fam)
            kind.append(name)
    return CopySet(images, np.array(family, np.int64), np.array(kind, object), list(eval_images),
                   len(pool) + np.arange(len(eval_images), dtype=np.int64))


@dataclass
class Sweep:
    """Recall and false merges of one method at each threshold (distances: a pair is a match at or below)."""

    thresholds: np.ndarray
    recall: np.ndarray  # share of copies matched, per threshold
    recall_by_kind: dict[str, np.ndarray]
    false_merge: np.ndarray  # share of distinct images merged with (or matched to) another, per threshold


def dedup_sweep(copies: CopySet, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], thresholds) -> Sweep:
    """near_dedup's view: at each threshold, the pool's connected components of pairs (a, b, distance)
    at or below it. A copy is found when its component holds its original; a distinct image (an
    original) is falsely merged when its component holds another original's family."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b, d = pairs
    n = len(copies.images)
    family, kind = copies.family, copies.kind
    original = kind == "original"
    pool_copy = ~original & (family < int(original.sum()))
    recall, false_merge, by_kind = [], [], {k: [] for k in np.unique(kind[pool_copy])}
    for t in thresholds:
        edge = d <= t
        _, label = connected_components(coo_matrix((np.ones(edge.sum()), (a[edge], b[edge])), shape=(n, n)),
                                        directed=False)
        home = np.full(len(original), -1, np.int64)  # each family's original's component
        home[family[original]] = label[original]
        found = label[pool_copy] == home[family[pool_copy]]
        recall.append(found.mean())
        for k in by_kind:
            by_kind[k].append(found[kind[pool_copy] == k].mean())
        families_in = np.unique(np.stack([label, family], 1), axis=0)
        crowded = np.flatnonzero(np.bincount(families_in[:, 0], minlength=n) > 1)
        false_merge.append(np.isin(label[original], crowded).mean())
    return Sweep(np.asarray(thresholds), np.array(recall), {k: np.array(v) for k, v in by_kind.items()},
                 np.array(false_merge))


def decontaminate_sweep(copies: CopySet, nearest: tuple[np.ndarray, np.ndarray], thresholds) -> Sweep:
    """decontaminate's view: each pool row's nearest evaluation image (index, distance). A planted
    eval copy is found when its nearest eval image is its original and within the threshold; a
    distinct pool image is falsely matched when any eval image is within it."""
    label, d = nearest
    kind, family = copies.kind, copies.family
    eval_copy = family >= int((kind == "original").sum())
    original = kind == "original"
    right = copies.eval_family[label] == family
    recall = np.array([(right[eval_copy] & (d[eval_copy] <= t)).mean() for t in thresholds])
    by_kind = {k: np.array([(right & (d <= t))[eval_copy & (kind == k)].mean() for t in thresholds])
               for k in np.unique(kind[eval_copy])}
    false_merge = np.array([(d[original] <= t).mean() for t in thresholds])
    return Sweep(np.asarray(thresholds), recall, by_kind, false_merge)


def at_false_merge(sweep: Sweep, target: float) -> int | None:
    """Index of the threshold with the best recall whose false-merge rate is at most `target`
    (the largest such threshold on ties); None when no threshold holds it."""
    ok = np.flatnonzero(sweep.false_merge <= target)
    if not len(ok):
        return None
    best = sweep.recall[ok].max()
    return int(ok[sweep.recall[ok] == best].max())
