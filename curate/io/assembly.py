"""A run's final assembly in bounded memory: sorted 128-bit uid parts merged k ways (an external
merge sort: uids.npy of a billion samples never sits in one process's memory), at most
MERGE_FAN_IN parts at a time: a pool of 100k tasks is merged in sorted runs of 64 parts, then
runs of those, so open files and buffers stay bounded however many tasks the run had."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from curate.io.writers import atomic
from curate.schema import UID_DTYPE

MERGE_BUFFER = 1 << 20  # uid pairs held at once by a merge, over all parts (16 MiB)
MERGE_FAN_IN = 64  # parts one merge reads at once (each gets MERGE_BUFFER / 64 pairs, 256 KiB)


def sort_uids(pairs: np.ndarray) -> np.ndarray:
    """Uid pairs (dtype u8,u8) in order. NumPy sorts a structured dtype through a generic
    field-by-field comparison (about 7x slower); the high half alone decides unless it ties."""
    ordered = pairs[np.argsort(pairs["f0"], kind="stable")]  # stable: fast on the merge's sorted runs
    high = ordered["f0"]
    if len(high) > 1 and (high[1:] == high[:-1]).any():
        ordered = ordered[np.lexsort((ordered["f1"], high))]
    return ordered


def write_sorted_uids(pairs: np.ndarray, path: Path) -> None:
    """Save a part of uid pairs (dtype u8,u8), sorted, for `merge_uids`."""
    pairs = sort_uids(pairs)
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, pairs)


class _SortedPart:
    """A sorted uid part read a chunk at a time with plain reads (a memory map would leave every
    page it touched counted in the process's RSS until the end of the merge)."""

    def __init__(self, path: Path):
        self.handle = open(path, "rb")
        major, _ = np.lib.format.read_magic(self.handle)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(self.handle)
        self.dtype, self.left = dtype, shape[0]
        self.buffer = np.zeros(0, dtype)

    def fill(self, rows: int) -> None:
        """Have at least `rows` rows buffered, or all that are left."""
        if len(self.buffer) < rows and self.left:
            more = np.fromfile(self.handle, self.dtype, min(self.left, rows - len(self.buffer)))
            self.left -= len(more)
            self.buffer = np.concatenate([self.buffer, more])

    def take(self, bound) -> np.ndarray:
        """The buffered rows at or below `bound`, removed from the buffer."""
        stop = int(np.searchsorted(self.buffer, bound, side="right"))
        taken, self.buffer = self.buffer[:stop], self.buffer[stop:]
        return taken

    def done(self) -> bool:
        return not len(self.buffer) and not self.left


def _merged(parts: list[Path]) -> Iterator[np.ndarray]:
    """Sorted chunks of the union of sorted parts; more than MERGE_FAN_IN parts are first merged,
    MERGE_FAN_IN at a time, into sorted runs in a temporary folder beside them."""
    if len(parts) <= MERGE_FAN_IN:
        yield from _merged_directly(parts)
        return
    with tempfile.TemporaryDirectory(prefix=".uid-merge-", dir=parts[0].parent) as folder:
        runs = []
        for start in range(0, len(parts), MERGE_FAN_IN):
            group = parts[start : start + MERGE_FAN_IN]
            runs.append(Path(folder) / f"run-{start:09d}.npy")
            _write_npy(_merged_directly(group), uid_count(group), runs[-1])
        yield from _merged(runs)


def _merged_directly(parts: list[Path]) -> Iterator[np.ndarray]:
    """Sorted chunks of the union of sorted parts: each round takes from every part what lies at
    or below the smallest of their buffered chunks' last elements, so what it yields is final."""
    readers = [_SortedPart(p) for p in parts]
    chunk = max(1024, MERGE_BUFFER // max(1, len(readers)))
    try:
        while True:
            for reader in readers:
                reader.fill(chunk)
            live = [r for r in readers if not r.done()]
            if not live:
                return
            bound = min((r.buffer[-1] for r in live), key=lambda v: (int(v[0]), int(v[1])))
            yield sort_uids(np.concatenate([r.take(bound) for r in live]))
    finally:
        for reader in readers:
            reader.handle.close()


def _write_npy(chunks: Iterable[np.ndarray], total: int, path: Path) -> None:
    """Sorted uid chunks holding `total` pairs in all, as one .npy file (atomically)."""
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(UID_DTYPE),
                                                      "fortran_order": False, "shape": (total,)})
        for chunk in chunks:
            handle.write(chunk.astype(UID_DTYPE).tobytes())


def uid_count(parts: list[Path]) -> int:
    """How many uids the parts hold (read from their headers)."""
    return sum(np.load(p, mmap_mode="r").shape[0] for p in parts)


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


def merge_uids(parts: list[Path], out: Path) -> int:
    """Merge sorted uid parts into one DataComp subset file (a sorted .npy of u8,u8); returns its length."""
    total = uid_count(parts)
    _write_npy(_merged(parts), total, out)
    return total
