"""DataComp's resharder: the samples of WebDataset shards whose json uid is in a uid file
(DataComp's subset format), written as new shards of N samples, optionally with faces blurred.

Rule for rule with mlfoundations/datacomp's resharder.py where it says so below: the uid file
must be a sorted .npy of dtype u8,u8 (`load_subset`, lines 661-673, asserts the dtype; uids are
looked up with `np.searchsorted`, so it must be sorted); a sample's uid is its json's `uid`
(lines 922-925), and a uid listed k times is written k times, keyed `UID-0` ... `UID-{k-1}`
(lines 927-950); faces are blurred with img2dataset's BoundingBoxBlurrer from normalized
[x0, y0, x1, y1] boxes and the image re-encoded as WebP (`blur_image`, lines 755-769), only for
a sample that has boxes (line 933). Output shards are NNNNNNNN.tar (`--output-shard-format`
{:08d}.tar) of `samples_per_shard` samples (`--shard-size`, default 10,000), the last shorter.

Where it differs: boxes come from the sample's json `face_bboxes` (DataComp reads them from the
metadata Parquet through a shard-to-Parquet map, `--blur-metadata-map`); a blurred image is
lossless WebP unless a quality is given (DataComp: quality 100, lossy, which changes pixels
outside the boxes too); any image format is blurred (DataComp only handles `.jpg`); a sample
that cannot be blurred is left out and counted, never written unblurred; the shards are read
and written in one stream, in input order (DataComp splits them over processes). Memory is one
sample and one output shard's file handle, whatever the sizes; the uid file is memory-mapped.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from curate.io.paths import open_input
from curate.io.readers.contract import InputError
from curate.io.readers.tasks import plan_inputs
from curate.io.shards import SIZES_FILE
from curate.io.tar_shard import TarShard
from curate.io.writers import file_key, temp_path, write_json_atomic
from curate.schema import UID_DTYPE, uid_array_unsorted

SORT_CHECK_ROWS = 1 << 20  # uids checked for order at once
OUTPUT_FILES = (SIZES_FILE, "reshard.json", "sample_ids.npy")  # beside the shards: what --overwrite may remove
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def shard_name(index: int) -> str:
    """DataComp's output shard name ({:08d}.tar)."""
    return f"{index:08d}.tar"


def load_uids(path: str | Path) -> np.ndarray:
    """The uid file memory-mapped, after checking what DataComp's resharder needs: a NumPy .npy
    of dtype u8,u8 (two uint64 per uid), one-dimensional, sorted."""
    path = Path(path)
    try:
        uids = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a NumPy .npy uid file (DataComp's format: sorted u8,u8 pairs): {exc}") from exc
    if uids.dtype != UID_DTYPE or uids.ndim != 1:
        raise ValueError(f"{path}: expected a 1-d array of dtype u8,u8 (DataComp's uid pairs), got {uids.ndim}-d "
                         f"{uids.dtype}")
    for start in range(0, len(uids), SORT_CHECK_ROWS):
        chunk = np.asarray(uids[start : start + SORT_CHECK_ROWS + 1])
        high, low = chunk["f0"], chunk["f1"]
        down = np.flatnonzero((high[1:] < high[:-1]) | ((high[1:] == high[:-1]) & (low[1:] < low[:-1])))
        if len(down):
            raise ValueError(f"{path}: not sorted (row {start + int(down[0]) + 1} is below the row before it); "
                             "sort it: uids.sort(); np.save(path, uids)")
    return uids


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a WebDataset tar, in order (the key is the
    member path up to the first dot of its file name, as WebDataset groups them)."""
    key, files = None, {}
    with open_input(path) as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            stem = f"{folder}/{stem}" if folder else stem
            if key is not None and stem != key:
                yield key, files
                files = {}
            key = stem
            files[ext.lower()] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def blur(data: bytes, boxes: list, quality: int | None) -> bytes:
    """`data` with the boxes (normalized [x0, y0, x1, y1]) blurred by img2dataset's
    BoundingBoxBlurrer, as DataComp's resharder does, re-encoded as WebP (lossless without a
    quality)."""
    import cv2
    from img2dataset.blurrer import BoundingBoxBlurrer

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError("the image does not decode")
    blurred = BoundingBoxBlurrer()(decoded, boxes)
    ok, encoded = cv2.imencode(".webp", blurred, [int(cv2.IMWRITE_WEBP_QUALITY), 101 if quality is None else quality])
    if not ok:
        raise ValueError("WebP encoding failed")
    return encoded.tobytes()


class _ShardWriter:
    """Output shards of `per_shard` samples each, committed (renamed into place) when full."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, per_shard
        self.sizes: dict[str, int] = {}
        self._shard: TarShard | None = None
        self._count = 0

    def add(self, names: list[str], payloads: list[bytes]) -> None:
        if self._shard is None:
            self._shard = TarShard(temp_path(self.folder / shard_name(len(self.sizes))))
        self._shard.add(names, payloads)
        self._count += 1
        if self._count == self.per_shard:
            self.close()

    def close(self) -> None:
        """Commit the shard being written, if any."""
        if self._shard is None:
            return
        name = shard_name(len(self.sizes))
        self._shard.close()
        os.replace(temp_path(self.folder / name), self.folder / name)
        self.sizes[name] = self._count
        self._shard, self._count = None, 0


def _prepare(output: Path, overwrite: bool) -> None:
    """An empty output folder: refuse one with files unless `overwrite`, then remove only what a
    reshard writes (its shards and files)."""
    output.mkdir(parents=True, exist_ok=True)
    found = [p for p in output.iterdir()]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(f"{output} is not empty: give an empty folder, or --overwrite to replace a reshard's "
                              "output there")
    ours = [p for p in found if p.name in OUTPUT_FILES or (p.suffix in (".tar", ".tmp") and p.name[:8].isdigit())]
    for path in ours:
        path.unlink()


def reshard(uids_path: str | Path, inputs: list[str], output: str | Path, samples_per_shard: int = 10_000,
            blur_faces: bool = False, webp_quality: int | None = None, overwrite: bool = False) -> dict:
    """Write the samples of the WebDataset shards `inputs` whose json uid is in the uid file to
    `output` as shards of `samples_per_shard` samples, with open_clip's sizes.json, a copy of the
    uid file (sample_ids.npy, as DataComp's resharder keeps) and reshard.json (counts); with
    `blur_faces`, each written sample's json `face_bboxes` are blurred. Returns the counts."""
    subset = load_uids(uids_path)
    tasks = plan_inputs(inputs)
    other = [t.path for t in tasks if t.kind != "tar"]
    if other:
        raise InputError(f"reshard reads WebDataset tars; {other[0]} is not one")
    output = Path(output)
    _prepare(output, overwrite)
    writer = _ShardWriter(output, samples_per_shard)
    counts: Counter = Counter()
    for task in tasks:
        for _, files in _tar_samples(task.path):
            counts["read"] += 1
            meta, problem = _meta(files)
            if problem:
                counts[problem] += 1
                continue
            uid = str(meta["uid"])
            pair = uid_array_unsorted([uid])[0]  # as curate writes uids.npy: 32 hex digits, else their md5
            copies = int(np.searchsorted(subset, pair, "right") - np.searchsorted(subset, pair, "left"))
            if not copies:
                continue
            boxes = meta.get("face_bboxes") or []
            if blur_faces and boxes:
                image = next((e for e in IMAGE_EXTENSIONS if e in files), None)
                try:
                    if image is None:
                        raise ValueError("no image")
                    blurred = blur(files.pop(image), boxes, webp_quality)
                except (ValueError, TypeError, IndexError):  # no image, bad boxes, an undecodable image
                    counts["blur_failed"] += 1
                    counts["held_back"] += copies
                    continue
                files["webp"] = blurred
                counts["blurred"] += 1
            stem = file_key(uid)
            for copy in range(copies):
                writer.add([f"{stem}-{copy}.{ext}" for ext in files], list(files.values()))
            counts["written"] += copies
    writer.close()
    write_json_atomic(writer.sizes, output / SIZES_FILE)
    shutil.copyfile(uids_path, output / "sample_ids.npy")
    summary = {"listed": len(subset), "read": counts["read"], "written": counts["written"],
               "not_found": max(len(subset) - counts["written"] - counts["held_back"], 0), "shards": len(writer.sizes),
               "blurred": counts["blurred"],
               "skipped": {k: counts[k] for k in ("no_json", "bad_json", "no_uid", "blur_failed") if counts[k]}}
    write_json_atomic(summary, output / "reshard.json")
    return summary


def _meta(files: dict[str, bytes]) -> tuple[dict, str | None]:
    """A sample's json and None, or {} and why it cannot be placed (no json, not an object, no uid)."""
    if "json" not in files:
        return {}, "no_json"
    try:
        meta = json.loads(files["json"])
    except (ValueError, UnicodeDecodeError):
        return {}, "bad_json"
    if not isinstance(meta, dict):
        return {}, "bad_json"
    if meta.get("uid") in (None, ""):
        return {}, "no_uid"
    return meta, None
