"""The occurrence numbers of the uids curate makes, counted over the whole input before any stage
runs, as a distributed job: a sample without a uid gets md5 of its url and text, so the same pair
in two row groups, two files or two tars would give two samples one uid. Every task's made uids
(read from its url and caption alone, or a tar's .txt and .json members) are hashed to
partitions by the engine's shuffle with their places (task << 32 | position); each partition
numbers the samples of a uid in input order (task, then position), and the repeats (occurrence
2, 3, ...) are routed to their tasks, whose readers make their uids with the number mixed in
(curate.schema.numbered_uid). No process holds more than a partition of uids however large the
pool, and the numbers do not depend on the engine, its workers or the partitioning.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.engines.shuffle import EngineFitContext, ShuffleEngine
from curate.io.readers.contract import InputError, InputTask, ReadLimits
from curate.io.readers.uids import task_made_uids
from curate.io.work import WORK_SUFFIX, read_work, write_work
from curate.io.writers import write_json_atomic
from curate.schema import uid_pairs
from curate.stage import POSITION_MASK, ROW_COLUMN, TASK_SHIFT, Dataset

MADE_SCHEMA = pa.schema([("uid_hi", pa.int64()), ("uid_lo", pa.int64()), (ROW_COLUMN, pa.int64())])
REPEAT_SCHEMA = pa.schema([(ROW_COLUMN, pa.int64()), ("occurrence", pa.int64())])


def count_repeats(engine: ShuffleEngine, tasks: list[InputTask], limits: ReadLimits, work: Path,
                  partition_rows: int, folder: Path, marker: Path) -> None:
    """Write `folder/task-NNNNN.arrow` (`_row`, occurrence) for every task holding samples whose
    made uid repeats an earlier sample's (occurrence >= 2); `marker` records a count that finished,
    so a resumed run reuses it (one cut short is redone whole). Runs in the engine's session."""
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    targets = [str(work / "made" / f"task-{task.index:05d}{WORK_SUFFIX}") for task in tasks]
    results = engine.map_calls(partial(write_made_uids, limits), list(zip(tasks, targets)))
    if problems := [r["problem"] for r in results if r["problem"]]:
        raise InputError(problems[0])
    data = Dataset(tuple(targets), sum(r["rows"] for r in results))
    context = EngineFitContext(engine, work, partition_rows)
    repeats = context.group(data, ["uid_hi"], number_repeats, "occurrences")
    if repeats.rows:
        context.route(repeats, folder)
    write_json_atomic({"tasks": len(tasks), "made_uids": data.rows, "repeats": repeats.rows}, marker)


def write_made_uids(limits: ReadLimits, item: tuple[InputTask, str]) -> dict:
    """A task's made uids (as first occurrences) as 128-bit pairs with their places, to a Parquet
    file; returns its row count and a problem (an unreadable url or caption column), as text, so
    any engine carries it back whole."""
    task, target = item
    try:
        positions, uids = task_made_uids(task, limits)
    except InputError as exc:
        positions, uids, problem = np.zeros(0, np.int64), pa.array([], pa.string()), str(exc)
    else:
        problem = None
    pairs = uid_pairs(uids)
    places = (np.int64(task.index) << TASK_SHIFT) | positions
    table = pa.Table.from_arrays([pa.array(pairs["f0"].view(np.int64)), pa.array(pairs["f1"].view(np.int64)),
                                  pa.array(places, pa.int64())], schema=MADE_SCHEMA)
    write_work(table, Path(target))
    return {"rows": len(pairs), "problem": problem}


def number_repeats(table: pa.Table) -> pa.Table:
    """A partition's rows that repeat an earlier row's uid (whole groups of equal high halves are
    in it), each with its occurrence number (2 for the second in input order, ...). Only rows whose
    high half is shared are sorted on all three columns (distinct pairs rarely share one)."""
    hi = table.column("uid_hi").to_numpy()
    by_hi = np.argsort(hi, kind="stable")
    ties = hi[by_hi][1:] == hi[by_hi][:-1]
    shared = by_hi[np.r_[ties, False] | np.r_[False, ties]] if len(hi) else by_hi
    hi, lo, rows = hi[shared], table.column("uid_lo").to_numpy()[shared], table.column(ROW_COLUMN).to_numpy()[shared]
    order = np.lexsort((rows, lo, hi))
    hi, lo, rows = hi[order], lo[order], rows[order]
    starts = np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])] if len(hi) else np.zeros(0, bool)
    first = np.flatnonzero(starts)
    occurrence = np.arange(len(hi)) - first[np.cumsum(starts) - 1] + 1
    return pa.Table.from_arrays([pa.array(rows[~starts], pa.int64()), pa.array(occurrence[~starts], pa.int64())],
                                schema=REPEAT_SCHEMA)


def task_repeats(folder: Path, task: int) -> pa.Table:
    """The occurrence numbers `count_repeats` gave a task's repeated samples: (position,
    occurrence) sorted by position, for `read_task`; empty where the task repeats none."""
    path = folder / f"task-{task:05d}{WORK_SUFFIX}"
    table = read_work(path) if path.exists() else REPEAT_SCHEMA.empty_table()
    positions = table.column(ROW_COLUMN).to_numpy() & POSITION_MASK
    return pa.table({"position": pa.array(positions, pa.int64()), "occurrence": table.column("occurrence")})
