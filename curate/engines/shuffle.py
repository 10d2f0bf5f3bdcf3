"""The fit operations of global stages (`FitContext`), shared by every engine and built on two
engine primitives: `map_calls` (a function over items, in the engine's workers) and `shuffle`
(rows hashed by key to partitions, a function over each whole partition: an out-of-core
partitioned spill on the local engine, Ray Data's sort-based groupby, Spark's groupBy).

Datasets are work files (Arrow IPC, curate.io.work) of narrow rows under the fit's work folder;
every function here that runs in a worker is a module-level function or a `functools.partial` of
one, so it pickles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from curate.io.work import WORK_SUFFIX, read_work, work_batches, work_schema, write_work
from curate.stage import ROW_COLUMN, TASK_SHIFT, Dataset, FitContext

BATCH_ROWS = 65_536  # rows per batch read by fit operations
PARTITION_COLUMN = "_partition"
TASK_COLUMN = "_task"

Reducer = Callable[[int, pa.Table], dict]  # (partition, its rows) -> {"path", "rows"} of the written result


class ShuffleEngine(Protocol):
    """What an engine gives the fit operations."""

    workers: int

    def map_calls(self, fn: Callable[[Any], Any], items: list) -> list:
        """`fn(item)` for every item, in the engine's workers; results in item order."""

    def shuffle(self, data: Dataset, keys: list[str], partitions: int, reduce: Reducer, work: Path) -> list[dict]:
        """Bring every row with the same `keys` into one of `partitions` partitions and run
        `reduce(partition, rows)` once on each partition that has rows; their results."""


def partition_of(column: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """Partition (0..partitions-1) of each value of an int64 key column: Fibonacci hashing, so
    keys that are small integers (task ids, cluster ids) spread too."""
    values = np.asarray(column.to_numpy(zero_copy_only=False), np.int64).view(np.uint64)
    mixed = values * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(32)) % np.uint64(partitions)).astype(np.int32)


def with_partition(keys: list[str], partitions: int, table: pa.Table) -> pa.Table:
    """The rows with their partition column (used by engines whose shuffle groups by a column)."""
    return table.append_column(PARTITION_COLUMN, pa.array(partition_of(table.column(keys[0]), partitions)))


def partition_slices(table: pa.Table, keys: list[str], partitions: int):
    """(partition, its rows) for each partition that has rows of `table`, hashed by `keys[0]`."""
    parts = partition_of(table.column(keys[0]), partitions)
    # a stable sort of 16-bit integers is a radix sort: 0.35 ms for a 65k-row batch, int32's 2.2 ms
    order = np.argsort(parts.astype(np.uint16) if partitions <= 1 << 16 else parts, kind="stable")
    table, counts = table.take(pa.array(order)), np.bincount(parts, minlength=partitions)
    starts = np.cumsum(counts) - counts
    for p in np.flatnonzero(counts):
        yield int(p), table.slice(starts[p], counts[p])


def run_partition(decide: Callable[[pa.Table], pa.Table], out: str, partition: int, table: pa.Table) -> dict:
    """`decide` on one partition's rows, written to `out/part-NNNNN.arrow`."""
    if PARTITION_COLUMN in table.column_names:
        table = table.drop_columns([PARTITION_COLUMN])
    result = decide(table)
    path = Path(out) / f"part-{partition:05d}{WORK_SUFFIX}"
    write_work(result, path)
    return {"path": str(path), "rows": result.num_rows}


def batches(path: str, columns: list[str] | None = None):
    """The rows of one work file, a batch (at most BATCH_ROWS for Parquet) at a time."""
    yield from work_batches(path, BATCH_ROWS, columns)


def _aggregate_file(partial_fn: Callable, merge: Callable, path: str) -> Any:
    return merge([partial_fn(table) for table in batches(path)])


def _map_file(fn: Callable[[pa.Table], pa.Table], paths: tuple[str, str]) -> int:
    source, target = paths
    tables = [fn(table) for table in batches(source)]
    if not tables:  # a file with no rows still gives its schema
        tables = [fn(work_schema(source).empty_table())]
    result = pa.concat_tables(tables)
    write_work(result, Path(target))
    return result.num_rows


def add_task_column(table: pa.Table) -> pa.Table:
    """Rejected rows with the task each came from (the high bits of its `_row`)."""
    rows = table.column(ROW_COLUMN).to_numpy()
    return table.append_column(TASK_COLUMN, pa.array(rows >> TASK_SHIFT, pa.int64()))


def write_task_decisions(folder: str, table: pa.Table) -> pa.Table:
    """Write a partition's rejected rows as one file per task (`task-NNNNN.arrow`, sorted by
    row); returns the (task, rows) written."""
    table = table.sort_by([(ROW_COLUMN, "ascending")])
    tasks = table.column(TASK_COLUMN).to_numpy()
    order = np.argsort(tasks, kind="stable")
    table, tasks = table.take(pa.array(order)), tasks[order]
    starts = np.flatnonzero(np.r_[True, tasks[1:] != tasks[:-1]]) if len(tasks) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(tasks)]
    for start, end in zip(starts, ends):
        part = table.slice(start, end - start).drop_columns([TASK_COLUMN])
        write_work(part, Path(folder) / f"task-{int(tasks[start]):05d}{WORK_SUFFIX}")
    return pa.table({"task": pa.array(tasks[starts], pa.int64()), "rows": pa.array(ends - starts, pa.int64())})


class EngineFitContext(FitContext):
    """FitContext over an engine: Datasets live under `root`, one folder per operation."""

    def __init__(self, engine: ShuffleEngine, root: Path, partition_rows: int):
        self.engine, self.root, self.partition_rows = engine, Path(root), partition_rows
        self._operations = 0

    def _folder(self, name: str) -> Path:
        self._operations += 1
        return self.root / f"{self._operations:03d}-{name}"

    def aggregate(self, data: Dataset, partial_fn: Callable[[pa.Table], Any], merge: Callable[[list], Any]) -> Any:
        return merge(self.engine.map_calls(partial(_aggregate_file, partial_fn, merge), list(data.files)))

    def map(self, data: Dataset, fn: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        folder = self._folder(name)
        targets = [str(folder / f"part-{i:05d}{WORK_SUFFIX}") for i in range(len(data.files))]
        rows = self.engine.map_calls(partial(_map_file, fn), list(zip(data.files, targets)))
        return Dataset(tuple(targets), int(sum(rows)))

    def partitions(self, rows: int) -> int:
        """How many partitions a shuffle of `rows` rows gets: at least one per worker, and enough
        that none holds much more than `partition_rows` (hashing spreads them evenly)."""
        return max(self.engine.workers, math.ceil(rows / self.partition_rows))

    def group(self, data: Dataset, keys: list[str], decide: Callable[[pa.Table], pa.Table], name: str) -> Dataset:
        if not data.rows:
            return Dataset((), 0)
        folder = self._folder(name)
        reduce = partial(run_partition, decide, str(folder))
        results = self.engine.shuffle(data, keys, self.partitions(data.rows), reduce, folder / "_shuffle")
        results = sorted(results, key=lambda r: r["path"])
        return Dataset(tuple(r["path"] for r in results), int(sum(r["rows"] for r in results)))

    def collect(self, data: Dataset) -> pa.Table:
        tables = [read_work(path) for path in data.files]
        return pa.concat_tables(tables) if tables else pa.table({})

    def fit(self, stage, data: Dataset, decisions: Path):
        """`stage.fit` over `data`, its rejected rows routed to `decisions/task-NNNNN.arrow`;
        returns the Fitted."""
        fitted = stage.fit(data, self)
        if fitted.rejected is not None and fitted.rejected.rows:
            self.route(fitted.rejected, decisions)
        return fitted

    def route(self, rejected: Dataset, folder: Path) -> None:
        """Send rejected rows to their tasks: `folder/task-NNNNN.arrow` per task with any."""
        with_tasks = self.map(rejected, add_task_column, "tasks")
        self.group(with_tasks, [TASK_COLUMN], partial(write_task_decisions, str(folder)), "route")


def reduce_group(reduce: Reducer, table: pa.Table) -> pa.Table:
    """A grouped-map function for engines that group rows by the partition column (Ray Data):
    one call per partition, its result as a one-row table."""
    return reduced(reduce(table.column(PARTITION_COLUMN)[0].as_py(), table))


def reduced(result: dict) -> pa.Table:
    """A reducer's result as the one-row table a grouped-map function returns."""
    return pa.table({"path": pa.array([result["path"]], pa.string()), "rows": pa.array([result["rows"]], pa.int64())})


def call(fn: Callable[[Any], Any], item: Any) -> Any:
    """`fn(item)`: a remote task body for engines that ship a function and an argument."""
    return fn(item)
