"""The input's own uids checked before any stage runs, as a distributed job: every task's uid
column is read alone (no other column), its 128-bit pairs are hashed to partitions by the
engine's shuffle, and each partition finds its repeats. No process holds more than a partition
of uids, however large the pool; the driver only sees the repeats' count and one example.

Uids that curate makes (an input without a uid column, a tar's samples whose .json gives none)
are checked by the run's final accounting instead.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.engines.shuffle import EngineFitContext, ShuffleEngine
from curate.io.readers.contract import InputError, InputTask, ReadLimits
from curate.io.readers.uids import may_give_uids, task_uids, uid_problem, where
from curate.io.work import WORK_SUFFIX, read_work, write_work
from curate.io.writers import write_json_atomic
from curate.schema import UID_DTYPE, uid_pairs
from curate.stage import POSITION_MASK, TASK_SHIFT, Dataset, shared_rows

UID_SCHEMA = pa.schema([("uid_hi", pa.int64()), ("uid_lo", pa.int64()), ("place", pa.int64())])
REPEAT_SCHEMA = pa.schema([("place", pa.int64()), ("first", pa.int64())])


def check_input_uids(engine: ShuffleEngine, tasks: list[InputTask], limits: ReadLimits, work: Path,
                     partition_rows: int, marker: Path) -> None:
    """Raise InputError (one line naming the file, row group and row) when a uid the input gives is
    empty or null, or the same uid is given twice anywhere in the input; `marker` records a check
    that passed, so a resumed run does not repeat it. Runs in the engine's session."""
    owned = [task for task in tasks if may_give_uids(task)]
    if marker.exists() or not owned:
        return
    targets = [str(work / "uids" / f"task-{task.index:05d}{WORK_SUFFIX}") for task in owned]
    results = engine.map_calls(partial(write_task_uids, limits), list(zip(owned, targets)))
    if problems := [r["problem"] for r in results if r["problem"]]:
        raise InputError(problems[0])
    data = Dataset(tuple(targets), sum(r["rows"] for r in results))
    repeats = EngineFitContext(engine, work, partition_rows).group(data, ["uid_hi"], repeated_uids, "repeats")
    if repeats.rows:
        example = next(t for path in repeats.files if (t := read_work(path)).num_rows)
        first, place = sorted((example["first"][0].as_py(), example["place"][0].as_py()))
        raise InputError(repeat_message(repeats.rows, owned, limits, first, place))
    write_json_atomic({"tasks": len(owned), "uids": data.rows}, marker)


def write_task_uids(limits: ReadLimits, item: tuple[InputTask, str]) -> dict:
    """A task's uid pairs with their places (task << 32 | row) to a Parquet file; returns its row
    count and the first problem found (an unreadable uid column, an empty or null uid), as text, so
    any engine carries it back whole."""
    task, target = item
    try:
        uids = task_uids(task, limits)
    except InputError as exc:  # an unreadable uid column: its message names the file and row group
        uids, problem = None, str(exc)
    else:
        problem = uid_problem(task, uids) if uids is not None else None
    if uids is not None and problem is None:
        given = np.flatnonzero(uids.is_valid().to_numpy(zero_copy_only=False))  # a tar's samples may give none
        pairs = uid_pairs(uids.take(pa.array(given)))
    else:
        given, pairs = np.zeros(0, np.int64), np.zeros(0, UID_DTYPE)
    places = (np.int64(task.index) << TASK_SHIFT) | given.astype(np.int64)
    write_work(pa.Table.from_arrays([pa.array(pairs["f0"].view(np.int64)), pa.array(pairs["f1"].view(np.int64)),
                                     pa.array(places)], schema=UID_SCHEMA), Path(target))
    return {"rows": len(pairs), "problem": problem}


def repeated_uids(table: pa.Table) -> pa.Table:
    """A partition's rows that repeat an earlier row's uid (whole groups of equal high halves are
    in it): each with the place of the first row giving that uid. Only rows whose high half is
    shared are sorted on all three columns (shared_rows)."""
    shared = shared_rows(table.column("uid_hi").to_numpy())
    hi, lo, places = (table.column(c).to_numpy()[shared] for c in ("uid_hi", "uid_lo", "place"))
    order = np.lexsort((places, lo, hi))
    hi, lo, places = hi[order], lo[order], places[order]
    starts = np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])] if len(hi) else np.zeros(0, bool)
    first = places[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    return pa.Table.from_arrays([pa.array(places[~starts]), pa.array(first[~starts])], schema=REPEAT_SCHEMA)


def repeat_message(count: int, tasks: list[InputTask], limits: ReadLimits, first: int, place: int) -> str:
    """One line: how many rows repeat a uid, and the two places of one such uid."""
    by_index = {task.index: task for task in tasks}
    (a, row_a), (b, row_b) = [(by_index[p >> TASK_SHIFT], p & POSITION_MASK) for p in (first, place)]
    uid = task_uids(a, limits)[row_a].as_py()
    keyed = a.keyed_samples or b.keyed_samples
    fix = "drop the uid column (the .json uid field of a tar's samples)" if keyed else "drop the uid column"
    return (f"{count} row(s) give a uid that another row gives too, e.g. {uid!r} at {where(a, row_a)} and "
            f"{where(b, row_b)}: uids must be unique; {fix} to have curate make them")
