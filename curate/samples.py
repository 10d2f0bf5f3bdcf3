"""Samples of a finished run joined back to their images and captions, for the report's galleries
and `curate inspect`.

The choice is fixed and seeded, and bounded at pool scale: tasks are visited in a seeded order
and, within a task, rows in the order of a seeded hash of their uid, so the first `n` rejections
of each (stage, reason) come from the first tasks that have any. Only the ledger parts of tasks
whose completion markers count a reason still wanted are read (uid, stage, reason and value,
never a whole ledger), so a reason rare in a pool of 10^5 tasks costs the markers' small JSON, not
every ledger part; and the visit stops once every reason has its `n` (the counts come from
stats.json). Rejected samples are then read
back from their input task (a reader stops at the last one wanted), kept ones from their Parquet
part, so the images read are those of a few tasks, whatever the pool's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.engines.occurrences import task_repeats
from curate.io.readers.contract import InputTask, ReadLimits
from curate.io.readers.tasks import read_task
from curate.schema import uid_pairs

# reasons whose ledger value is the uid of the sample kept in the rejected one's place
DUPLICATE_REASONS = ("duplicate", "near_duplicate", "near_duplicate_embedding", "semantic_duplicate")
PICKED_SCHEMA = pa.schema([("uid", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
                           ("value", pa.string()), ("task", pa.int64())])
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of uint64 that scatters every input bit."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uid_rank(uids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per uid (the same uid and seed, the same rank)."""
    pairs = uid_pairs(uids)
    return mix64(pairs["f0"] ^ mix64(pairs["f1"] ^ np.uint64(seed)))


def task_order(tasks: Iterable[int], seed: int) -> list[int]:
    """Task indices in a seeded order."""
    tasks = np.fromiter(tasks, np.int64)
    return tasks[np.argsort(mix64(tasks.astype(np.uint64) ^ mix64(np.uint64(seed))), kind="stable")].tolist()


def reason_counts(stats: dict) -> dict[tuple[str, str], int]:
    """Rejections per (stage name, reason) over the run, a global stage's fit rows folded in."""
    counts: dict[tuple[str, str], int] = {}
    for stage in stats["stages"]:
        for reason, n in stage["reasons"].items():
            counts[(stage["name"], reason)] = counts.get((stage["name"], reason), 0) + n
    return counts


def pick_rejected(layout, tasks: list[int], wanted: dict[tuple[str, str], int], seed: int = 0) -> pa.Table:
    """Up to `wanted[(stage, reason)]` ledger rows of each (stage, reason), with their task: the
    seeded choice described above (PICKED_SCHEMA, grouped by reason in `wanted`'s order)."""
    left = {key: n for key, n in wanted.items() if n > 0}
    picked: dict[tuple[str, str], list[pa.Table]] = {key: [] for key in left}
    for task in task_order(tasks, seed):
        if not left:
            break
        if not left.keys() & _task_reasons(layout, task):
            continue
        ledger = _task_ledger(layout, task)
        if not ledger.num_rows:
            continue
        ledger = ledger.take(pa.array(np.argsort(uid_rank(ledger.column("uid"), seed), kind="stable")))
        keys = pc.dictionary_encode(pc.binary_join_element_wise(ledger.column("stage"), ledger.column("reason"), "\0"))
        keys = keys.combine_chunks()
        codes = keys.indices.to_numpy(zero_copy_only=False)
        for code, key in enumerate(keys.dictionary.to_pylist()):
            key = tuple(key.split("\0", 1))
            if left.get(key, 0) <= 0:
                continue
            rows = np.flatnonzero(codes == code)[: left[key]]
            part = ledger.take(pa.array(rows)).append_column("task", pa.array(np.full(len(rows), task), pa.int64()))
            picked[key].append(part)
            left[key] -= len(rows)
            if not left[key]:
                del left[key]
    tables = [t for key in wanted for t in picked.get(key, [])]
    return pa.concat_tables(tables).cast(PICKED_SCHEMA) if tables else PICKED_SCHEMA.empty_table()


def _task_reasons(layout, task: int) -> set[tuple[str, str]]:
    """The (stage, reason) pairs a task's ledger holds, from its markers' stats (no ledger read)."""
    found, k = set(), 0
    while (path := layout.marker(k, task)).exists():
        for entry in json.loads(path.read_text())["stats"].values():
            found.update((entry["name"], reason) for reason, count in entry["reasons"].items() if count)
        k += 1
    return found


def _task_ledger(layout, task: int) -> pa.Table:
    """A task's ledger rows over every pass (uid, stage, reason, value)."""
    parts, k = [], 0
    while (path := layout.ledger_part(k, task)).exists():
        parts.append(pq.read_table(path, columns=["uid", "stage", "reason", "value"]))
        k += 1
    return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string())
                                                          for c in ("uid", "stage", "reason", "value")})


def pick_kept(layout, tasks: list[int], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(task, row) of up to `n` kept samples: tasks in seeded order, rows by seeded uid rank
    (only the uid column of the parts visited is read)."""
    chosen: list[tuple[int, int]] = []
    for task in task_order(tasks, seed):
        if len(chosen) >= n:
            break
        path = layout.kept_parquet(task)
        if not path.exists():
            continue
        uids = pq.read_table(path, columns=["uid"]).column("uid")
        rows = np.argsort(uid_rank(uids, seed), kind="stable")[: n - len(chosen)]
        chosen += [(task, int(row)) for row in rows]
    return chosen


def read_kept(layout, chosen: list[tuple[int, int]], columns: list[str]) -> pa.Table | None:
    """The kept rows `chosen` ((task, row) pairs, from pick_kept), with `columns` where present."""
    tables = []
    for task in dict.fromkeys(t for t, _ in chosen):
        part = pq.ParquetFile(layout.kept_parquet(task))
        names = [c for c in columns if c in part.schema_arrow.names]
        rows = [row for t, row in chosen if t == task]
        tables.append(part.read(columns=names).take(pa.array(rows, pa.int64())))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def find_kept(layout, tasks: list[int], uids: list[str], columns: list[str]) -> pa.Table | None:
    """The kept rows whose uid is in `uids` (the uid column of every part is read, the other
    columns only of the rows found)."""
    wanted = pa.array(sorted(set(uids)), pa.string())
    chosen: list[tuple[int, int]] = []
    for task in tasks:
        path = layout.kept_parquet(task)
        if wanted and path.exists():
            found = pc.is_in(pq.read_table(path, columns=["uid"]).column("uid"), value_set=wanted)
            chosen += [(task, int(row)) for row in np.flatnonzero(found.to_numpy(zero_copy_only=False))]
    return read_kept(layout, chosen, columns) if chosen else None


def find_rejected(layout, tasks: list[int], uids: list[str]) -> pa.Table:
    """The ledger rows (with their task) of `uids`, reading every task's ledger parts' uid column."""
    wanted = pa.array(sorted(set(uids)), pa.string())
    found = []
    for task in tasks:
        ledger = _task_ledger(layout, task)
        rows = ledger.filter(pc.is_in(ledger.column("uid"), value_set=wanted))
        if rows.num_rows:
            found.append(rows.append_column("task", pa.array(np.full(rows.num_rows, task), pa.int64())))
    return pa.concat_tables(found).cast(PICKED_SCHEMA) if found else PICKED_SCHEMA.empty_table()


def read_inputs(picked: pa.Table, tasks: dict[int, InputTask], limits: ReadLimits = ReadLimits(),
                batch_size: int = 256, layout=None) -> dict[str, dict]:
    """uid -> the input row (its columns as the reader gives them: text, image, url...) of every
    picked sample, read from its input task; each task is read only up to its last sample wanted.
    `layout`: the run's, whose occurrence numbers of repeated (url, text) pairs make the uids the
    input lacks as the run made them (curate.engines.occurrences)."""
    rows: dict[str, dict] = {}
    counted = layout is not None and layout.repeats_counted().exists()  # not by a run of an older curate
    by_task = picked.group_by("task").aggregate([("uid", "list")])
    for task, uids in zip(by_task.column("task").to_pylist(), by_task.column("uid_list").to_pylist()):
        left = pa.array(sorted(set(uids)), pa.string())
        repeats = task_repeats(layout.repeats(), task) if counted else None
        for batch in read_task(tasks[task], batch_size, limits, repeats):
            table = batch.table
            found = table.filter(pc.is_in(table.column("uid"), value_set=left))
            rows.update((row["uid"], row) for row in found.to_pylist())
            left = pc.filter(left, pc.invert(pc.is_in(left, value_set=found.column("uid"))))
            if not len(left):
                break
    return rows
