"""A run's final assembly in bounded memory: Parquet parts concatenated row group by row group,
and sorted 128-bit uid parts merged k ways (an external merge sort: uids.npy of a billion
samples never sits in one process's memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.writers import atomic
from curate.schema import UID_DTYPE

MERGE_BUFFER = 1 << 20  # uid pairs held at once by a merge, over all parts (16 MiB)


def concat_parquet(parts: list[Path], out: Path, schema: pa.Schema) -> int:
    """Write the rows of `parts` (in order) to one Parquet file, a row group at a time; returns
    the row count."""
    rows = 0
    with atomic(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for part in parts:
            source = pq.ParquetFile(part)
            for group in range(source.num_row_groups):
                table = source.read_row_group(group).cast(schema)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def write_sorted_uids(pairs: np.ndarray, path: Path) -> None:
    """Save a part of uid pairs (dtype u8,u8), sorted, for `merge_uids`."""
    pairs = np.sort(pairs)
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, pairs)


def _merged(parts: list[Path]) -> Iterator[np.ndarray]:
    """Sorted chunks of the union of sorted parts: each round takes from every part what lies at
    or below the smallest of their next chunks' last elements, so what it yields is final."""
    arrays = [a for a in (np.load(p, mmap_mode="r") for p in parts) if len(a)]
    chunk = max(1024, MERGE_BUFFER // max(1, len(arrays)))
    at = [0] * len(arrays)
    while True:
        live = [i for i in range(len(arrays)) if at[i] < len(arrays[i])]
        if not live:
            return
        ends = {i: min(at[i] + chunk, len(arrays[i])) for i in live}
        bound = min((arrays[i][ends[i] - 1] for i in live), key=lambda v: (int(v[0]), int(v[1])))
        pieces = []
        for i in live:
            stop = at[i] + int(np.searchsorted(arrays[i][at[i] : ends[i]], bound, side="right"))
            pieces.append(np.asarray(arrays[i][at[i] : stop]))
            at[i] = stop
        yield np.sort(np.concatenate(pieces))


def repeated_uids(parts: list[Path], examples: int = 3) -> tuple[int, list[str]]:
    """How many rows over all parts repeat the uid of the row before them (in sorted order), and
    a few of those uids as hex."""
    count, found, last = 0, {}, None
    for chunk in _merged(parts):
        joined = chunk if last is None else np.concatenate([last, chunk])
        repeats = joined[1:][joined[1:] == joined[:-1]]
        count += len(repeats)
        for value in repeats[:examples]:
            found.setdefault(f"{int(value[0]):016x}{int(value[1]):016x}", None)
        last = chunk[-1:]
    return count, list(found)[:examples]


def uid_count(parts: list[Path]) -> int:
    """How many uids the parts hold (read from their headers)."""
    return sum(np.load(p, mmap_mode="r").shape[0] for p in parts)


def merge_uids(parts: list[Path], out: Path) -> int:
    """Merge sorted uid parts into one DataComp subset file (a sorted .npy of u8,u8); returns its length."""
    total = uid_count(parts)
    with atomic(out) as tmp, open(tmp, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(UID_DTYPE),
                                                      "fortran_order": False, "shape": (total,)})
        for chunk in _merged(parts):
            handle.write(chunk.astype(UID_DTYPE).tobytes())
    return total
