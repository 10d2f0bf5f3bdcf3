"""What every reader takes and gives: a task of the input, the limits of a read, and a batch as read.

A reader gives `ReadBatch`es, a plain IO type below the stage contract: the samples it met, in
input order and the core schema, and the failures among them (their position, a reason and the
ledger value). The engine that runs the stages turns a batch into the read step's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.io.paths import StorageError
from curate.schema import count_occurrences

InputError = StorageError  # an input path or URL cannot be read; the message names it and says what was expected
READ_STAGE = "read"  # the ledger's stage of the samples a reader could not read whole
FAILURES_SCHEMA = pa.schema([("position", pa.int64()), ("reason", pa.string()), ("value", pa.string())])


@dataclass(frozen=True)
class InputTask:
    """One unit of input: a Parquet row group, a tar, or a folder of files."""

    index: int
    kind: str  # "parquet" | "tar" | "files" | "url_list"
    path: str
    row_group: int = 0
    rows: int | None = None  # known up front for Parquet
    limit: int | None = None  # read only the task's first `limit` samples (`curate run --limit`)

    def describe(self) -> str:
        return f"{self.path} (row group {self.row_group})" if self.kind == "parquet" else self.path

    @property
    def keyed_samples(self) -> bool:
        """Whether its samples are files grouped by key (a tar or a folder), each with its own .json."""
        return self.kind in ("tar", "files")


@dataclass(frozen=True)
class ReadBatch:
    """A batch of a task as read: `table` holds every sample the reader met, in input order and the
    core schema; `failures` (FAILURES_SCHEMA, by position) names those it could not read whole or
    that are over a ReadLimits cap, with the reason and the ledger value."""

    table: pa.Table
    failures: pa.Table = field(default_factory=FAILURES_SCHEMA.empty_table)

    @classmethod
    def of_rows(cls, table: pa.Table, reasons: list | None = None, values: list | None = None) -> ReadBatch:
        """A batch from a reason per row (None: read whole) and each failure's ledger value."""
        if reasons is None:
            return cls(table)
        reasons, values = np.asarray(reasons, object), np.asarray(values, object)
        rows = np.flatnonzero(np.not_equal(reasons, None))
        return cls(table, pa.Table.from_arrays([pa.array(rows, pa.int64()), pa.array(reasons[rows], pa.string()),
                                                pa.array(values[rows], pa.string())], schema=FAILURES_SCHEMA))

    def failed_mask(self) -> np.ndarray:
        """True at the position of every failure."""
        mask = np.zeros(self.table.num_rows, bool)
        mask[self.failures.column("position").to_numpy()] = True
        return mask

    def kept(self) -> pa.Table:
        """The samples read whole."""
        return self.table.filter(pa.array(~self.failed_mask())) if self.failures.num_rows else self.table

    def slice(self, start: int, length: int) -> ReadBatch:
        """Rows start..start+length and their failures."""
        if not self.failures.num_rows:
            return ReadBatch(self.table.slice(start, length), self.failures)
        positions = self.failures.column("position").to_numpy()
        lo, hi = np.searchsorted(positions, [start, start + length])
        failures = self.failures.slice(lo, hi - lo)
        failures = failures.set_column(0, "position", pa.array(positions[lo:hi] - start, pa.int64()))
        return ReadBatch(self.table.slice(start, length), failures)

    def failing(self, mask: pa.ChunkedArray, reason: str, values: pa.ChunkedArray) -> ReadBatch:
        """The batch with the rows where `mask` is true (nulls: false) failing for `reason` with
        `values` (Arrow strings, a row's ledger value each), but for rows that failed already."""
        rows = np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False) & ~self.failed_mask())
        if not len(rows):
            return self
        added = pa.Table.from_arrays([pa.array(rows, pa.int64()), pa.nulls(len(rows), pa.string()).fill_null(reason),
                                      values.take(pa.array(rows))], schema=FAILURES_SCHEMA)
        return ReadBatch(self.table, pa.concat_tables([self.failures, added]).sort_by("position"))


@dataclass(frozen=True)
class ReadLimits:
    """What the readers do not load, and what they do with what they cannot read.

    Sizes above which a value is not loaded: its sample goes to the ledger instead
    (`member_too_large`: a tar member or image file, `image_too_large`: a Parquet image cell,
    `caption_too_long`: a caption, in UTF-8 bytes). A tar member's size is in its header, so an
    oversized member is skipped unread; a Parquet row group is read whole, then its oversized
    cells are rejected before any stage sees them. `on_unreadable`: a Parquet row group that
    cannot be read (a corrupt page) fails its task naming the file and row group ("fail"), or
    sends its rows, counted from the file's metadata, to the ledger as `unreadable_row_group`
    ("ledger")."""

    max_member_bytes: int = 64 << 20
    max_caption_bytes: int = 64 << 10
    on_unreadable: str = "fail"

    def refuse_member(self, name: str, ext: str, size: int) -> tuple[str, str] | None:
        """(reason, ledger value) when a member of `size` bytes must not be read, else None."""
        if ext.lower() == "txt" and size > self.max_caption_bytes:
            return "caption_too_long", f"{name}: {size} bytes > max_caption_bytes {self.max_caption_bytes}"
        if size > self.max_member_bytes:
            return "member_too_large", f"{name}: {size} bytes > max_member_bytes {self.max_member_bytes}"
        return None

    def check(self, batch: ReadBatch) -> ReadBatch:
        """The batch with its rows whose image or caption is over its cap failing (columnar)."""
        table = batch.table
        for column, cap, reason, setting in (("image", self.max_member_bytes, "image_too_large", "max_member_bytes"),
                                             ("text", self.max_caption_bytes, "caption_too_long", "max_caption_bytes")):
            if column not in table.column_names or pa.types.is_null(table.schema.field(column).type):
                continue
            sizes = pc.binary_length(table.column(column))
            over = pc.greater(sizes, cap)
            if pc.any(over).as_py():
                values = pc.binary_join_element_wise(pc.cast(sizes, pa.string()), f" bytes > {setting} {cap}", "")
                batch = batch.failing(over, reason, values)
        return batch


class Occurrences:
    """The occurrence numbers of a task's samples whose uid curate makes, by position in the task:
    the run's (`repeats`), else counted within the task as it is read."""

    def __init__(self, repeats: pa.Table | None):
        self.repeats, self.seen = repeats, {}
        if repeats is not None:
            self.positions, self.numbers = (repeats.column(c).to_numpy() for c in ("position", "occurrence"))

    def of(self, start: int, pairs: list[tuple | None]) -> np.ndarray:
        """The numbers of the samples at positions `start`.. with these (url, text) pairs (None: a
        sample whose uid is given)."""
        if self.repeats is None:
            return count_occurrences(pairs, self.seen)
        numbers = np.ones(len(pairs), np.int64)
        lo, hi = np.searchsorted(self.positions, [start, start + len(pairs)])
        numbers[self.positions[lo:hi] - start] = self.numbers[lo:hi]
        return numbers

    def within(self, rows: int) -> np.ndarray | None:
        """The numbers of a whole task of `rows` rows read as one table (None: normalize counts them)."""
        return None if self.repeats is None else self.of(0, [None] * rows)


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An exception as one printable line of at most `limit` characters (a reader's message may
    hold newlines and the garbage bytes it met)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
    return f"{type(exc).__name__}: {text[:limit]}"
