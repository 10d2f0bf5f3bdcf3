"""Writers: Parquet parts, WebDataset tars, the rejection ledger and DataComp uid files.

Every file is written under a temporary name and renamed into place on commit, so a
crashed run never leaves a half-written output behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.schema import uid_array

TMP_SUFFIX = ".tmp"
_SAFE_KEY = re.compile(r"[0-9A-Za-z_-]+")
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


def image_extension(data: bytes) -> str:
    """WebDataset extension for encoded image bytes, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "img"


def file_key(uid: str) -> str:
    """A file name stem for a sample: its uid when that is a plain name (letters, digits, _ and -), else
    the uid's md5 (a WebDataset key ends at the first dot, and a path must not escape its folder)."""
    return uid if _SAFE_KEY.fullmatch(uid) else hashlib.md5(uid.encode()).hexdigest()


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is committed."""
    return path.with_name(path.name + TMP_SUFFIX)


def remove_temp_files(folder: Path) -> int:
    """Delete leftovers of an interrupted run; returns how many were removed."""
    removed = 0
    for path in folder.rglob(f"*{TMP_SUFFIX}"):
        path.unlink()
        removed += 1
    return removed


class PartWriter:
    """Writes one task's rows to a Parquet part and, optionally, a WebDataset tar, atomically.

    Use as a context manager: the files appear under their final names only when the
    block ends without an exception.
    """

    def __init__(self, parquet_path: Path, tar_path: Path | None = None):
        self.parquet_path, self.tar_path = parquet_path, tar_path
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._tar = None

    def __enter__(self) -> "PartWriter":
        self.parquet_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tar_path is not None:
            # plain tarfile in WebDataset's layout: importing webdataset imports torch (seconds per worker)
            self.tar_path.parent.mkdir(parents=True, exist_ok=True)
            self._tar = tarfile.open(temp_path(self.tar_path), "w", format=tarfile.USTAR_FORMAT)
        return self

    def write(self, table: pa.Table) -> None:
        """Append a batch of rows."""
        if self._parquet is None:
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(temp_path(self.parquet_path), self._schema, compression=_compression(self._schema))
        elif not table.schema.equals(self._schema):
            table = table.select(self._schema.names).cast(self._schema)
        if table.num_rows:
            self._parquet.write_table(table)
        if self._tar is not None:
            self._write_tar(table)
        self.rows += table.num_rows

    def _write_tar(self, table: pa.Table) -> None:
        meta_columns = [f.name for f in table.schema if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)]
        metas = table.select(meta_columns).to_pylist()
        for image, meta in zip(table.column("image").to_pylist(), metas):
            key = file_key(meta["uid"])  # the json keeps the uid
            if image is not None:
                self._add(f"{key}.{image_extension(image)}", image)
            self._add(f"{key}.txt", (meta["text"] or "").encode("utf-8"))
            self._add(f"{key}.json", json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8"))

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        self._tar.addfile(info, io.BytesIO(data))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._parquet is None and exc_type is None:
            raise ValueError(f"{self.parquet_path}: nothing was written; call write() with an empty batch at least")
        if self._parquet is not None:
            self._parquet.close()
        written = [self.parquet_path] + ([self.tar_path] if self.tar_path else [])
        for path in written:
            tmp = temp_path(path)
            if exc_type is None:
                os.replace(tmp, path)
            elif tmp.exists():
                tmp.unlink()


def _compression(schema: pa.Schema) -> dict[str, str]:
    """zstd for every column but binary ones: encoded images do not compress, so don't spend CPU on them."""
    return {f.name: "none" if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) else "zstd" for f in schema}


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed to `path` when the block succeeds, removed if it fails.
    The temporary name is this writer's own: workers committing the same file at once (the same
    store shard, a cache entry, meta.json) each write theirs and the last rename wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a whole table to Parquet, atomically."""
    with atomic(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON, atomically."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_uids(uids: list[str], path: Path) -> None:
    """DataComp subset file: sorted uids as 128-bit pairs of uint64 (dtype u8,u8)."""
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, uid_array(uids))
