"""Writers: Parquet parts, WebDataset tars, the rejection ledger and DataComp uid files.

Every file is written under a temporary name and renamed into place on commit, so a
crashed run never leaves a half-written output behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.tar_shard import NAME_BYTES, TarShard
from curate.io.work import WORK_SUFFIX, WorkPart, work_batches
from curate.schema import uid_array

TMP_SUFFIX = ".tmp"
_OWN_TEMP = re.compile(r"(.+\.\d+-[0-9a-f]{8}|part-\d{5,}\.(parquet|arrow|tar))\.tmp")  # atomic()'s, PartWriter's
_PART_FOLDERS, _WORK_FOLDER = ("shards", "parquet", "rejected.parquet"), "_work"  # RunLayout's folders
_SAFE_KEY = re.compile(r"[0-9A-Za-z_-]+")
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))
MAX_KEY = NAME_BYTES - len(".json")  # the longest extension written is 4 letters (json, webp)
_SYNC_THREADS = 8  # fsyncs in flight at once (sync_paths)
_JSON = json.JSONEncoder(ensure_ascii=False, default=str)  # one encoder: json.dumps with options makes one a call


def image_extension(data: bytes) -> str:
    """WebDataset extension for encoded image bytes, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return "img"


def file_key(uid: str) -> str:
    """A file name stem for a sample: its uid when that is a plain name (letters, digits, _ and -) of at
    most MAX_KEY characters, else the uid's md5 (a WebDataset key ends at the first dot, a path must not
    escape its folder, and a tar member's name holds 100 bytes)."""
    return uid if len(uid) <= MAX_KEY and _SAFE_KEY.fullmatch(uid) else hashlib.md5(uid.encode()).hexdigest()


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is committed."""
    return path.with_name(path.name + TMP_SUFFIX)


def remove_temp_files(folder: Path) -> int:
    """Delete the temporaries an interrupted run left in output `folder`; returns how many. Only
    curate's own names (atomic()'s NAME.PID-RANDOM.tmp, PartWriter's part-N.parquet.tmp and
    part-N.tar.tmp) where a run writes them (the folder itself, its part folders and anything under
    its work folder, as RunLayout names them): the user's *.tmp files stay."""
    places = [folder, *(folder / name for name in _PART_FOLDERS)]
    found = [path for place in places if place.is_dir() for path in place.glob(f"*{TMP_SUFFIX}")]
    found += (folder / _WORK_FOLDER).rglob(f"*{TMP_SUFFIX}")
    own = [path for path in found if _OWN_TEMP.fullmatch(path.name) and path.is_file()]
    for path in own:
        path.unlink(missing_ok=True)
    return len(own)


class PartWriter:
    """Writes one task's rows to a Parquet part (a `.arrow` path: a work part, curate.io.work) and,
    optionally, a WebDataset tar, atomically.

    Use as a context manager: the files appear under their final names only when the
    block ends without an exception.
    """

    def __init__(self, parquet_path: Path, tar_path: Path | None = None):
        self.parquet_path, self.tar_path = parquet_path, tar_path
        self.rows = 0
        self._parquet: pq.ParquetWriter | WorkPart | None = None
        self._schema: pa.Schema | None = None
        self._tar: TarShard | None = None

    def __enter__(self) -> PartWriter:
        self.parquet_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tar_path is not None:
            self.tar_path.parent.mkdir(parents=True, exist_ok=True)
            self._tar = TarShard(temp_path(self.tar_path))
        return self

    def write(self, table: pa.Table) -> None:
        """Append a batch of rows. A batch with a column more, or a column of a wider type (a column
        of nulls now holding text, int64 now double: a tar's json fields are typed batch by batch),
        widens the part: the rows written so far are rewritten to the wider schema."""
        if self._parquet is None:
            self._open(table)
        elif not table.schema.equals(self._schema):
            try:
                wider = pa.unify_schemas([self._schema, table.schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"{self.parquet_path}: a batch's columns do not fit the earlier batches' "
                                 f"({exc})") from exc
            if not wider.equals(self._schema):
                self._widen(wider)
            table = _conformed(table, self._schema)
        if table.num_rows:
            self._parquet.write_table(table)
        if self._tar is not None:
            self._write_tar(table)
        self.rows += table.num_rows

    def _open(self, table: pa.Table) -> None:
        self._schema = table.schema
        tmp = temp_path(self.parquet_path)
        self._parquet = (WorkPart(tmp, self._schema) if self.parquet_path.suffix == WORK_SUFFIX
                         else pq.ParquetWriter(tmp, self._schema, **parquet_options(table)))

    def _widen(self, schema: pa.Schema) -> None:
        """Rewrite the part so far to `schema`, a row group (record batch) at a time, and go on writing with it."""
        self._parquet.close()
        tmp = temp_path(self.parquet_path)
        narrow = tmp.with_name(f"{tmp.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")  # atomic()'s form
        os.replace(tmp, narrow)
        try:
            tables = (_conformed(table, schema) for table in work_batches(narrow))
            first = next(tables, None)
            self._open(schema.empty_table() if first is None else first)  # a real batch decides Parquet's options
            for table in [] if first is None else chain([first], tables):
                self._parquet.write_table(table)
        finally:
            narrow.unlink(missing_ok=True)

    def _write_tar(self, table: pa.Table) -> None:
        """Each row as WebDataset members: {key}.{jpg,png,...} (when it has an image), {key}.txt, {key}.json."""
        meta_columns = [f.name for f in table.schema
                        if not pa.types.is_binary(f.type) and not pa.types.is_large_binary(f.type)]
        metas = table.select(meta_columns).to_pylist()
        images = _binary_views(table.column("image")) if "image" in table.column_names else [None] * table.num_rows
        names, payloads = [], []
        for image, meta in zip(images, metas):
            key = file_key(meta["uid"])  # the json keeps the uid
            if image is not None:
                names.append(f"{key}.{image_extension(bytes(image[:12]))}")
                payloads.append(image)
            names += (f"{key}.txt", f"{key}.json")
            payloads += ((meta["text"] or "").encode("utf-8"), _JSON.encode(meta).encode("utf-8"))
        self._tar.add(names, payloads)

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


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order (nulls for those it lacks), cast to its types."""
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, names=schema.names).cast(schema)


def _binary_views(column: pa.ChunkedArray) -> list[memoryview | None]:
    """The values of a binary column as views into its Arrow buffers (None where null), not copies."""
    if pa.types.is_null(column.type):
        return [None] * len(column)
    views: list[memoryview | None] = []
    for chunk in column.chunks:
        if not len(chunk):
            continue
        wide = pa.types.is_large_binary(chunk.type)
        _, offsets, data = chunk.buffers()
        ends = np.frombuffer(offsets, np.int64 if wide else np.int32)
        ends = ends[chunk.offset : chunk.offset + len(chunk) + 1].tolist()
        data = memoryview(data) if data is not None else memoryview(b"")
        valid = chunk.is_valid().to_numpy(zero_copy_only=False).tolist()
        views += [data[start:end] if ok else None for start, end, ok in zip(ends, ends[1:], valid)]
    return views


# rows of the first batch that decide which columns get a dictionary (8192 rows: 0.7 ms a column, each write)
DICTIONARY_SAMPLE = 1024


def parquet_options(table: pa.Table) -> dict:
    """Parquet writer options for tables like `table`: zstd for every column but binary ones
    (encoded images do not compress, so don't spend CPU on them), and dictionary encoding only
    where it pays. A column of mostly distinct values (uid, url, caption, a uid's 64-bit halves,
    a score) is dictionary-encoded until the dictionary overflows and then written plain anyway:
    trying costs about half the write time of text (three quarters of random integers') and four
    times the read time, so such columns are written plain from the start (decided on a sample
    of the first batch). Such a column of text, and bytes, get no statistics either: the min and
    max of random uids, free captions or image bytes prune no row group, and cost a comparison
    per value (a third of a ledger part's write time)."""
    sample = table.slice(0, DICTIONARY_SAMPLE)
    binary = {f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    distinct = {f.name for f in table.schema if _countable(f.type)
                if sample.num_rows and pc.count_distinct(sample.column(f.name)).as_py() > sample.num_rows // 2}
    unsummarised = binary | {f.name for f in table.schema if f.name in distinct and _text(f.type)}
    return {"compression": {f.name: "none" if f.name in binary else "zstd" for f in table.schema},
            "write_statistics": [f.name for f in table.schema if f.name not in unsummarised],
            "use_dictionary": [f.name for f in table.schema if f.name not in binary | distinct]}


def _text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _countable(kind: pa.DataType) -> bool:
    return _text(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)


@contextmanager
def atomic(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write; renamed to `path` when the block succeeds, removed if it fails.
    The temporary name is this writer's own: workers committing the same file at once (the same
    store shard, a cache entry, meta.json) each write theirs and the last rename wins. `durable`:
    the bytes are fsynced before the rename and the folder after it, so the file survives a power
    loss once the block ends (for commit markers: what they vouch for must be synced first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sync_paths(paths: list[Path]) -> None:
    """fsync files, then the folders holding them (so their names are durable too), a few at once
    (concurrent fsyncs share the file system's journal commits)."""
    folders = sorted({p.parent for p in paths})
    with ThreadPoolExecutor(_SYNC_THREADS) as pool:
        list(pool.map(_fsync, paths))
        list(pool.map(_fsync, folders))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a whole table to Parquet, atomically."""
    with atomic(path) as tmp:
        pq.write_table(table, tmp, **parquet_options(table))


def write_json_atomic(data: dict, path: Path, durable: bool = False) -> None:
    """Write JSON, atomically (`durable`: see atomic)."""
    with atomic(path, durable) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_uids(uids: list[str], path: Path) -> None:
    """DataComp subset file: sorted uids as 128-bit pairs of uint64 (dtype u8,u8)."""
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, uid_array(uids))
