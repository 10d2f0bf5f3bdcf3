"""DataComp's filtering-track files: a metadata folder of Parquet files, each with an `.npz` of
embeddings beside it (same stem, rows in the Parquet's order), and the import of those vectors
into an embedding store, so the embedding stages run on DataComp's own vectors.

DataComp ships, per metadata shard, `NAME.parquet` (uid, url, text, original_width,
original_height, clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256) and
`NAME.npz` with `b32_img`, `b32_txt`, `l14_img`, `l14_txt` (its baselines read `l14_img` by
row: baselines/apply_filter.py lines 164-169, image_based_clustering.py line 89). Arrays are
read a chunk of rows at a time out of the .npz (a zip of .npy members), so memory is a chunk
whatever a file holds.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.embedding_store import KEYED_BY_UID, EmbeddingStore

CHUNK_ROWS = 8_192  # vectors read, and committed as one store shard, at once


def metadata_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(Parquet, .npz) pairs of a DataComp metadata folder, sorted by name; a Parquet without its
    .npz is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected DataComp metadata: NAME.parquet with NAME.npz)")
    parquets = sorted(folder.glob("*.parquet"))
    if not parquets:
        raise FileNotFoundError(f"{folder}: no .parquet files (expected DataComp metadata: NAME.parquet with NAME.npz)")
    missing = [p.name for p in parquets if not p.with_suffix(".npz").exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: no .npz beside {', '.join(missing[:5])} (DataComp ships NAME.npz with "
                                "each NAME.parquet)")
    return [(p, p.with_suffix(".npz")) for p in parquets]


def _header(member, path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an .npy member's header (the stream is left at the first row)."""
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(member)
    if fortran_order or len(shape) != 2:
        raise ValueError(f"{path}: {key} must be a C-ordered 2-d array (rows x dim), got shape {shape}"
                         f"{' in Fortran order' if fortran_order else ''}")
    return shape, dtype


def _member(archive: zipfile.ZipFile, path: Path, key: str):
    """The open .npy member `key` of an .npz."""
    name = f"{key}.npy"
    if name not in archive.namelist():
        keys = sorted(n.removesuffix(".npy") for n in archive.namelist())
        raise ValueError(f"{path}: no array {key!r} (it holds {keys})")
    return archive.open(name)


def npz_shape(path: str | Path, key: str) -> tuple[int, int]:
    """(rows, dim) of array `key` in an .npz, from its header alone."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive, _member(archive, path, key) as member:
        return _header(member, path, key)[0]


def npz_chunks(path: str | Path, key: str, rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Array `key` of an .npz, `rows` rows at a time (a compressed member is inflated as it is read)."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive, _member(archive, path, key) as member:
        (total, dim), dtype = _header(member, path, key)
        row_bytes = dim * dtype.itemsize
        for start in range(0, total, rows):
            count = min(rows, total - start)
            data = member.read(count * row_bytes)
            if len(data) != count * row_bytes:
                raise ValueError(f"{path}: {key} ends at row {start + len(data) // max(row_bytes, 1)} of {total}")
            yield np.frombuffer(data, dtype).reshape(count, dim)


def text_key_for(image_key: str) -> str:
    """DataComp's text array beside an image one: l14_img -> l14_txt."""
    return image_key.removesuffix("_img") + "_txt"


def store_fingerprint(image_key: str, text_key: str) -> str:
    """What an imported store names as its scorer: the .npz arrays it came from."""
    return f"datacomp-npz:{image_key}+{text_key}"


def import_pair(parquet: Path, npz: Path, store_root: str | Path, image_key: str, text_key: str,
                rows: int = CHUNK_ROWS) -> int:
    """Import one metadata file's vectors into the store, keyed by the Parquet's uids in row
    order; returns how many rows. Each chunk of rows is one store shard (float16, as the store
    keeps vectors; the image-text cosine is computed in float32 first)."""
    uids = pq.read_table(parquet, columns=["uid"]).column("uid")
    if uids.null_count:
        raise ValueError(f"{parquet}: {uids.null_count} row(s) without a uid")
    shapes = {key: npz_shape(npz, key) for key in (image_key, text_key)}
    for key, (count, _) in shapes.items():
        if count != len(uids):
            raise ValueError(f"{npz}: {key} has {count} rows, but {parquet.name} has {len(uids)}: DataComp's arrays "
                             "follow the Parquet's rows one for one")
    if shapes[image_key][1] != shapes[text_key][1]:
        raise ValueError(f"{npz}: {image_key} and {text_key} differ in size ({shapes[image_key][1]} vs "
                         f"{shapes[text_key][1]})")
    store = EmbeddingStore(store_root, store_fingerprint(image_key, text_key), KEYED_BY_UID, index=False)
    uids = pc.cast(uids, "string").to_pylist()
    start = 0
    for image, text in zip(npz_chunks(npz, image_key, rows), npz_chunks(npz, text_key, rows)):
        keys = [(uid, 0, 0) for uid in uids[start : start + len(image)]]
        scores = np.einsum("ij,ij->i", image.astype(np.float32), text.astype(np.float32))
        store.put(keys, image, text, scores)
        start += len(image)
    return len(uids)


def import_embeddings(folder: str | Path, store_root: str | Path, image_key: str = "l14_img",
                      text_key: str | None = None, workers: int = 1, rows: int = CHUNK_ROWS) -> dict:
    """Import every .npz of a DataComp metadata folder into an embedding store keyed by uid
    (`store_root`; one store per pair of arrays: l14 and b32 vectors go to different stores).
    Files are imported in parallel by `workers` processes; returns a summary."""
    text_key = text_key or text_key_for(image_key)
    pairs = metadata_pairs(folder)
    for _, npz in pairs:  # every file checked before any is written
        npz_shape(npz, image_key), npz_shape(npz, text_key)
    jobs = [(parquet, npz, str(store_root), image_key, text_key, rows) for parquet, npz in pairs]
    if workers > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            counts = list(pool.map(_import_job, jobs))
    else:
        counts = [_import_job(job) for job in jobs]
    dim = npz_shape(pairs[0][1], image_key)[1]
    return {"files": len(pairs), "rows": sum(counts), "dim": dim, "store": str(store_root),
            "model": store_fingerprint(image_key, text_key)}


def _import_job(job: tuple) -> int:
    return import_pair(*job)
