"""The files a run writes for itself and reads back (a pass's rows for the next pass, fit rows,
shuffle results, a fit's decisions, uid check parts): Arrow IPC, not Parquet.

Each is written once and read back once or twice by the run, so none of Parquet's encoding
(dictionaries, levels, statistics) pays: 65k metadata rows take 8 ms to write and 1.5 ms to read
as lz4-compressed IPC, 16 ms and 7 ms as lz4 Parquet without statistics, at about the same size;
72k fit rows (uid, a 128-bit key, _row) 0.14 ms to write uncompressed, 3.6 ms as Parquet. The
wide rows of a pass are lz4-compressed (text halves); narrow rows of hashes, integers and uids
are not (they barely compress). The readers also take Parquet, told apart by the file's magic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORK_SUFFIX = ".arrow"
PASS_CODEC = "lz4"  # a pass's rows: text compresses to about half
_IPC_MAGIC = b"ARROW1"


class WorkPart:
    """A work file written a table at a time (PartWriter's writer for a `.arrow` part)."""

    def __init__(self, path: Path, schema: pa.Schema, compression: str | None = PASS_CODEC):
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema, options=pa.ipc.IpcWriteOptions(compression=compression))

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


def write_work(table: pa.Table, path: Path) -> None:
    """A whole table as an uncompressed work file, atomically."""
    from curate.io.writers import atomic  # here: writers imports this module for PartWriter

    with atomic(Path(path)) as tmp:
        part = WorkPart(tmp, table.schema, compression=None)
        try:
            part.write_table(table)
        finally:
            part.close()


def _is_ipc(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(_IPC_MAGIC)) == _IPC_MAGIC


def work_schema(path: Path) -> pa.Schema:
    """A work file's schema."""
    if not _is_ipc(path):
        return pq.read_schema(path)
    with pa.OSFile(str(path)) as file:
        return pa.ipc.open_file(file).schema


def work_batches(path: Path, batch_size: int | None = None, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A work file's rows a batch at a time (memory: one batch): an IPC file's record batches as
    written, a Parquet file's in batches of `batch_size` rows (default: a row group each); only
    `columns` where given."""
    if not _is_ipc(path):
        source = pq.ParquetFile(path)
        if batch_size is None:
            yield from (source.read_row_group(group, columns=columns) for group in range(source.num_row_groups))
        else:
            yield from (pa.Table.from_batches([b]) for b in source.iter_batches(batch_size=batch_size, columns=columns))
        return
    with pa.OSFile(str(path)) as file:
        reader = pa.ipc.open_file(file)
        for index in range(reader.num_record_batches):
            table = pa.Table.from_batches([reader.get_batch(index)])
            yield table.select(columns) if columns is not None else table


def read_work(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole work file (only `columns` where given)."""
    tables = list(work_batches(path, columns=columns))
    if tables:
        return pa.concat_tables(tables)
    schema = work_schema(path)
    return (pa.schema([schema.field(c) for c in columns]) if columns is not None else schema).empty_table()
